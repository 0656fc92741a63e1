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
for h in nlohmann CLI gtest gmock jpeglib.h jerror.h jmorecfg.h turbojpeg.h png.h pngconf.h \
         pnglibconf.h libpng16 zlib.h zconf.h gif_lib.h webp; do
  cp -r "/usr/include/$h" "$dest/include/"
done
cp /usr/include/x86_64-linux-gnu/jconfig.h "$dest/include/"
for l in libjpeg.a libturbojpeg.a libpng16.a libpng.a libz.a libgif.a libwebp.a libwebpdemux.a libsharpyuv.a \
         libgtest.a libgtest_main.a libgmock.a libgmock_main.a; do
  [ -f "$arch/$l" ] && cp "$arch/$l" "$dest/lib/"
done
cp -r /usr/share/cmake/nlohmann_json /usr/share/cmake/CLI11 "$dest/share/cmake/"
for pc in libwebp libwebpdemux libsharpyuv; do
  [ -f "$arch/pkgconfig/$pc.pc" ] && sed "s#^prefix=.*#prefix=\${pcfiledir}/../..#; s#^libdir=.*#libdir=\${prefix}/lib#; s#^includedir=.*#includedir=\${prefix}/include#" \
    "$arch/pkgconfig/$pc.pc" > "$dest/lib/pkgconfig/$pc.pc"
done
# The tokenizer fixture (beside the checkout here) for test models made there.
cp ../shared/fixtures/tokenizer/moxin-vlm.tokenizer.json "$dest/"
du -sh "$dest"
