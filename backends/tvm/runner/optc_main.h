// optc_main.h: what optc_runner.cc and optc_rpc_server.cc share: how main() reports an error
// that escapes the program (one line on stderr, exit status 1). Included by relative path, so
// the bundle build (arm.py) needs no include flag; arm.py hashes it with the program sources.
#pragma once

#include <tvm/ffi/error.h>

#include <algorithm>
#include <exception>
#include <iostream>
#include <string>

namespace optc {

// `s` with its line breaks made spaces (an error is reported on one line).
inline std::string OneLine(std::string s) {
  std::replace(s.begin(), s.end(), '\n', ' ');
  return s;
}

// main() of an optc program: run(argc, argv), or, for an exception escaping it,
// "<program>: error: <kind>: <message>" on one line of stderr and exit status 1.
inline int MainReportingErrors(const char* program, int (*run)(int, char**), int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const tvm::ffi::Error& e) {
    std::cerr << program << ": error: " << e.kind() << ": " << OneLine(e.message()) << std::endl;
  } catch (const std::exception& e) {
    std::cerr << program << ": error: " << OneLine(e.what()) << std::endl;
  } catch (...) {
    std::cerr << program << ": error: unknown exception" << std::endl;
  }
  return 1;
}

}  // namespace optc
