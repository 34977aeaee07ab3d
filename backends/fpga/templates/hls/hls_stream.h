// optc stand-in for Vitis HLS <hls_stream.h>: an unbounded FIFO, enough for C simulation of
// a DATAFLOW region whose functions run one after another. With Vitis, drop this directory
// from the include path and the real header (bounded FIFOs, concurrent processes) is used.
#ifndef OPTC_HLS_STREAM_STANDIN_H
#define OPTC_HLS_STREAM_STANDIN_H
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <string>

namespace hls {
template <typename T> class stream {
 public:
  stream() {}
  explicit stream(const char* name) : name_(name) {}
  T read() {
    if (q_.empty()) { std::fprintf(stderr, "hls::stream %s: read while empty\n", name_.c_str()); std::abort(); }
    T v = q_.front(); q_.pop_front(); return v;
  }
  void read(T& v) { v = read(); }
  void write(const T& v) { q_.push_back(v); }
  bool empty() const { return q_.empty(); }
  bool full() const { return false; }
  size_t size() const { return q_.size(); }
  stream& operator>>(T& v) { v = read(); return *this; }
  stream& operator<<(const T& v) { write(v); return *this; }
 private:
  std::deque<T> q_;
  std::string name_;
};
}  // namespace hls
#endif
