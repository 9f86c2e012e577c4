// Grain of at::parallel_for over the rows of a destination-sorted CSR: about 16k values of
// per-edge work per task (rows * average degree * row width), at least one row.
#pragma once
#include <algorithm>
#include <cstdint>

namespace graphattn {

inline int64_t row_grain(int64_t rows, int64_t E, int64_t F) {
  const int64_t per_row = std::max<int64_t>(1, (E / std::max<int64_t>(1, rows)) * F);
  return std::max<int64_t>(1, 16384 / per_row);
}

}  // namespace graphattn
