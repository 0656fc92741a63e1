#!/usr/bin/env bash
# Copies this machine's Debian -dev headers and static libraries that the GPU machine lacks
# into .deps/ (git-ignored), to be carried to it and passed as -DMOXIN_EXTRA_PREFIX=.deps.
# Nothing here is committed: the files come from the installed Debian packages.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.deps
rm -rf "$dest"
mkdir -p "$dest/include" "$dest/lib/pkgconfig" "$dest/share/cmake"
arch=/usr/lib/x86_64-linux-gnu
for h in nlohmann CLI gtest gmock jpeglib.h jerror.h jmorecfg.h png.h pngconf.h \
         pnglibconf.h libpng16 zlib.h zconf.h gif_lib.h webp; do
  cp -r "/usr/include/$h" "$dest/include/"
done
cp /usr/include/x86_64-linux-gnu/jconfig.h "$dest/include/"
for l in libjpeg.a libpng16.a libpng.a libz.a libgif.a libwebp.a libwebpdemux.a libsharpyuv.a \
         libgtest.a libgtest_main.a libgmock.a libgmock_main.a; do
  [ -f "$arch/$l" ] && cp "$arch/$l" "$dest/lib/"
done
cp -r /usr/share/cmake/nlohmann_json /usr/share/cmake/CLI11 "$dest/share/cmake/"
for pc in libwebp libwebpdemux libsharpyuv; do
  [ -f "$arch/pkgconfig/$pc.pc" ] && sed "s#^prefix=.*#prefix=\${pcfiledir}/../..#; s#^libdir=.*#libdir=\${prefix}/lib#; s#^includedir=.*#includedir=\${prefix}/include#" \
    "$arch/pkgconfig/$pc.pc" > "$dest/lib/pkgconfig/$pc.pc"
done
# cpp-httplib for `moxin serve`: Debian's is a compiled library, so the header, the shared library
# and the libraries it needs that the GPU machine may lack (libssl/libcrypto 3 it has) travel; run
# the server there with LD_LIBRARY_PATH=.deps/lib. The .pc is rewritten without Requires.private
# (the GPU machine has no openssl.pc) but keeps the library's defines (they change struct layouts).
cp -r /usr/include/httplib.h /usr/include/brotli /usr/include/openssl "$dest/include/"
cp /usr/include/x86_64-linux-gnu/openssl/* "$dest/include/openssl/"  # opensslconf.h, configuration.h
cp -P "$arch"/libcpp-httplib.so* "$arch"/libbrotli{dec,enc,common}.so.1* "$dest/lib/"
cp -L "$arch/libz.so.1" "$dest/lib/"
httplib_version=$(sed -n 's/^Version: *//p' "$arch/pkgconfig/cpp-httplib.pc")
cat > "$dest/lib/pkgconfig/cpp-httplib.pc" <<PC
prefix=\${pcfiledir}/../..
includedir=\${prefix}/include
libdir=\${prefix}/lib

Name: cpp-httplib
Description: A C++ HTTP/HTTPS server and client library (relocated from Debian's package)
Version: $httplib_version
Libs: -L\${libdir} -lcpp-httplib -Wl,-rpath-link,\${libdir}
Libs.private: -pthread
Cflags: -I\${includedir} -DCPPHTTPLIB_OPENSSL_SUPPORT -DCPPHTTPLIB_ZLIB_SUPPORT -DCPPHTTPLIB_BROTLI_SUPPORT
PC
# The official openai client (tests/py/test_batch_invariance.py serves over HTTP): wheels for the
# GPU machine's Python 3.12, which has no network; bench/run_gpu.sh installs them there.
python3 -m pip download --quiet --only-binary=:all: --python-version 3.12 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --dest "$dest/wheels" openai
# The tokenizer fixture, where bench/run_gpu.sh points MOXIN_TOKENIZER_FIXTURE.
cp tests/fixtures/tokenizer/moxin-vlm.tokenizer.json "$dest/"
du -sh "$dest"
