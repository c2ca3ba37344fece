#include <algorithm>
#include <atomic>
#include <vector>

#include "common/parallel.h"
#include "histogram/histogram.h"
#include "histogram/histogram_math.h"

namespace mopt::kernels::histogram {
namespace {

constexpr int64_t kStrip = 256;           // elements binned before they are counted
constexpr int64_t kInterleavedBlock = 64;  // interleaved channels counted by one tile
constexpr int64_t kPrefetchStrips = 2;     // interleaved rows are prefetched this far ahead
constexpr int64_t kMinTileElements = int64_t{1} << 15;
constexpr int64_t kFlushElements = int64_t{1} << 30;  // private 32-bit counts flush before this
constexpr int64_t kLocalCountBudget = int64_t{1} << 21;  // private counters per tile (8 MiB)

int channel_bins(const HistogramParams& p, int64_t c) {
  const int64_t b = p.bins[c];
  return static_cast<int>(b < p.max_bins ? b : p.max_bins);
}

bool channel_counts(const HistogramParams& p, int64_t c) {
  return channel_bins(p, c) > 0 && p.upper[c] > 0.0f;
}

// Bins of n elements of one channel; uncounted ones go to the trash slot `bins`. Binning a strip
// first and counting it afterwards keeps this loop free of the histogram's store-to-load
// dependencies, so it vectorizes.
template <typename T>
void strip_bins(const T* x, int64_t stride, int64_t n, int bins, float upper, bool skip_zeros,
                int32_t* out) {
  const float bins_f = static_cast<float>(bins);
  if (stride == 1) {
    for (int64_t k = 0; k < n; ++k) {
      const int b = histogram_bin(load_abs(x + k), bins_f, bins, upper, skip_zeros);
      out[k] = b < 0 ? bins : b;
    }
  } else {
    for (int64_t k = 0; k < n; ++k) {
      const int b = histogram_bin(load_abs(x + k * stride), bins_f, bins, upper, skip_zeros);
      out[k] = b < 0 ? bins : b;
    }
  }
}

// Per-channel binning parameters of a tile of interleaved channels; a channel that counts
// nothing gets upper -1, which sends every value to its trash slot.
struct TileChannels {
  std::vector<float> upper, bins_f;
  std::vector<int32_t> bins, offset;  // offset: start of the channel's private counts
};

// One row of an interleaved tile: slots (offset + bin) of its nc channels.
template <typename T>
void row_slots(const T* x, int64_t stride, int64_t nc, const TileChannels& t, int trash,
               bool skip_zeros, int32_t* out) {
  if (stride == 1) {
    for (int64_t c = 0; c < nc; ++c) {
      const int b = histogram_bin(load_abs(x + c), t.bins_f[c], t.bins[c], t.upper[c], skip_zeros);
      out[c] = t.offset[c] + (b < 0 ? trash : b);
    }
  } else {
    for (int64_t c = 0; c < nc; ++c) {
      const int b =
          histogram_bin(load_abs(x + c * stride), t.bins_f[c], t.bins[c], t.upper[c], skip_zeros);
      out[c] = t.offset[c] + (b < 0 ? trash : b);
    }
  }
}

// Counts channels [c0, c1) over elements [n0, n1). `exclusive`: no other tile writes these rows.
template <typename T>
void count_tile(const HistogramParams& p, int64_t c0, int64_t c1, int64_t n0, int64_t n1,
                bool exclusive) {
  const T* x = static_cast<const T*>(p.x);
  const int64_t nc = c1 - c0;
  // Private counts per channel: the bins, a trash slot, then padding so consecutive channels do
  // not start a multiple of 4 KiB apart (their hot low bins would share one L1 set).
  const int64_t row_len = (p.max_bins + 1 + 15) / 16 * 16 + 16;
  std::vector<uint32_t> local(static_cast<size_t>(nc * row_len), 0u);
  int32_t idx[kStrip];

  auto flush = [&] {
    for (int64_t c = c0; c < c1; ++c) {
      uint32_t* h = local.data() + (c - c0) * row_len;
      int64_t* row = p.hist + c * p.max_bins;
      const int bins = channel_bins(p, c);
      for (int b = 0; b < bins; ++b) {
        if (h[b] == 0) continue;
        if (exclusive) {
          row[b] += h[b];
        } else {
          std::atomic_ref<int64_t>(row[b]).fetch_add(h[b], std::memory_order_relaxed);
        }
      }
      std::fill(h, h + row_len, 0u);
    }
  };

  if (nc == 1 || p.element_stride == 1) {
    // Channel by channel along its contiguous (or strided) elements.
    for (int64_t c = c0; c < c1; ++c) {
      if (!channel_counts(p, c)) continue;
      const int bins = channel_bins(p, c);
      uint32_t* h = local.data() + (c - c0) * row_len;
      const T* xc = x + c * p.channel_stride;
      for (int64_t r0 = n0; r0 < n1; r0 += kFlushElements) {
        const int64_t r1 = std::min(n1, r0 + kFlushElements);
        for (int64_t s = r0; s < r1; s += kStrip) {
          const int64_t m = std::min(kStrip, r1 - s);
          strip_bins(xc + s * p.element_stride, p.element_stride, m, bins, p.upper[c],
                     p.skip_zeros, idx);
          for (int64_t k = 0; k < m; ++k) ++h[idx[k]];
        }
        if (r1 < n1) flush();
      }
    }
    flush();
    return;
  }

  // Interleaved channels (channel-last activations): walk the rows, binning the tile's channels
  // of each row together, so every cache line is read once and mostly contiguously.
  TileChannels t;
  for (int64_t c = c0; c < c1; ++c) {
    const bool counts = channel_counts(p, c);
    t.upper.push_back(counts ? p.upper[c] : -1.0f);
    t.bins.push_back(counts ? channel_bins(p, c) : 1);
    t.bins_f.push_back(static_cast<float>(t.bins.back()));
    t.offset.push_back(static_cast<int32_t>((c - c0) * row_len));
  }
  const int trash = static_cast<int>(p.max_bins);
  const int64_t rows = std::max<int64_t>(1, kStrip / nc);
  // Only a contiguous run of channels is worth prefetching as a block.
  const int64_t row_bytes = p.channel_stride == 1 ? nc * static_cast<int64_t>(sizeof(T)) : 0;
  int64_t since_flush = 0;
  for (int64_t n = n0; n < n1; n += rows) {
    const int64_t m = std::min(rows, n1 - n);
    if (since_flush + m > kFlushElements) {
      flush();
      since_flush = 0;
    }
    // Rows lie element_stride apart, too far for the hardware prefetcher: fetch the rows of a
    // strip ahead while this one is binned.
    const int64_t ahead = n + kPrefetchStrips * rows;
    for (int64_t r = ahead; r < std::min(n1, ahead + rows); ++r) {
      const auto* line =
          reinterpret_cast<const char*>(x + r * p.element_stride + c0 * p.channel_stride);
      for (int64_t b = 0; b < row_bytes; b += 64) __builtin_prefetch(line + b);
    }
    for (int64_t r = 0; r < m; ++r) {
      row_slots(x + (n + r) * p.element_stride + c0 * p.channel_stride, p.channel_stride, nc, t,
                trash, p.skip_zeros, idx + r * nc);
    }
    for (int64_t k = 0; k < m * nc; ++k) ++local[idx[k]];
    since_flush += m;
  }
  flush();
}

template <typename T>
void run(const HistogramParams& p) {
  std::fill(p.hist, p.hist + p.channels * p.max_bins, int64_t{0});
  if (p.length == 0 || p.channels == 0) return;
  // Channels closer together than a channel's consecutive elements are walked row by row.
  const bool interleaved =
      p.channels > 1 && p.element_stride != 1 && p.channel_stride < p.element_stride;
  const int64_t budget_block = std::max<int64_t>(1, kLocalCountBudget / (p.max_bins + 1));
  const int64_t block = interleaved ? std::min(kInterleavedBlock, budget_block) : 1;
  const int64_t blocks = (p.channels + block - 1) / block;
  const int64_t threads = parallel_max_threads();
  // Few channels: split their elements too, each split counting privately and merging
  // atomically; many channels: each tile owns its rows.
  int64_t splits = 1;
  if (blocks < threads) {
    const int64_t by_work = std::max<int64_t>(1, p.length * std::min(block, p.channels) /
                                                     kMinTileElements);
    splits = std::min({(threads + blocks - 1) / blocks, by_work, p.length});
  }
  const int64_t rows_per_split = (p.length + splits - 1) / splits;
  const bool exclusive = splits == 1;
  parallel_for(0, blocks * splits, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t cb = t / splits;
      const int64_t s = t % splits;
      const int64_t c0 = cb * block;
      const int64_t c1 = std::min(p.channels, c0 + block);
      const int64_t n0 = s * rows_per_split;
      const int64_t n1 = std::min(p.length, n0 + rows_per_split);
      if (n0 < n1) count_tile<T>(p, c0, c1, n0, n1, exclusive);
    }
  });
}

}  // namespace

void histogram_check(const HistogramParams& p) {
  MOPT_CHECK(p.channels >= 0 && p.length >= 0, "histogram sizes must be non-negative (channels ",
             p.channels, ", length ", p.length, ")");
  MOPT_CHECK(p.max_bins >= 1 && p.max_bins <= kMaxHistogramBins,
             "histogram max_bins must be in [1, ", kMaxHistogramBins, "], got ", p.max_bins);
  MOPT_CHECK(p.channels == 0 || (p.hist != nullptr && p.upper != nullptr && p.bins != nullptr),
             "histogram output, upper or bins pointer is null");
  MOPT_CHECK(p.length == 0 || p.channels == 0 || p.x != nullptr, "histogram input pointer is null");
}

void histogram_cpu(const HistogramParams& p) {
  histogram_check(p);
  MOPT_DTYPE_SWITCH(p.dtype, T, [&] { run<T>(p); });
}

}  // namespace mopt::kernels::histogram
