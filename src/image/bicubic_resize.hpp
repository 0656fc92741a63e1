// Pillow's bicubic resize as its two passes (resize.cpp), so that a decoder can feed the first
// one with bands of rows while it decodes the rest (decode_preprocess.cpp). resize_bicubic()
// runs the same steps on a whole image; the bytes are the same either way.
#pragma once

#include <cstdint>
#include <vector>

#include "image/image.hpp"

namespace moxin {

// For each output index of one pass: the first input index and the fixed-point weights of the
// taps.
struct ResizeTaps {
  int stride = 0;          // weights per output index (Pillow's ksize)
  std::vector<int> first;  // first input index used
  std::vector<int> count;  // number of input indices used
  std::vector<int32_t> weights;
};

class BicubicResize {
 public:
  // Plans src_width x src_height -> width x height (Pillow's choice of pass order). Throws
  // moxin::Error on a size that is not positive.
  BicubicResize(int src_width, int src_height, int width, int height);
  ~BicubicResize();

  // Whether the horizontal pass runs first, row by row over source rows [rows_begin(),
  // rows_end()) (the rows the vertical pass will read): then horizontal_rows() must cover them
  // before finish().
  bool rows_first() const { return rows_first_; }
  int rows_begin() const { return rows_begin_; }
  int rows_end() const { return rows_end_; }

  // The horizontal pass over source rows [begin, end) of `src` (the source's pixels, rows of
  // src_width x 3 bytes; only those rows are read), on the resize threads or on this one.
  void horizontal_rows(const uint8_t* src, int begin, int end, bool parallel);

  // The rest of the resize of `src` (the whole source, decoded): the vertical pass over what
  // horizontal_rows() produced, or both passes when the horizontal one does not run first.
  Image finish(const Image& src);

 private:
  int src_width_, src_height_, width_, height_;
  ResizeTaps vertical_taps_, horizontal_taps_;
  bool rows_first_ = false;
  int rows_begin_ = 0, rows_end_ = 0;
  Image wide_;  // rows_first: the horizontal pass's output, rows [rows_begin, rows_end)
};

}  // namespace moxin
