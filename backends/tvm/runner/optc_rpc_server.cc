// optc_rpc_server: a TVM RPC server (the protocol of `python -m tvm.exec.rpc_server` and TVM's
// apps/cpp_rpc) that needs nothing but libtvm_runtime.so + libtvm_ffi.so, so it can be copied to
// an aarch64 board beside optc_runner, or run on an x86 host under qemu-aarch64.
//
//   optc_rpc_server [--host ADDR] [--port N] [--key KEY] [--tracker HOST:PORT]
//                   [--custom-addr ADDR] [--workdir DIR] [--once] [--emulated TEXT]
//
// Protocol (python/tvm/rpc/server.py): the client sends RPC_MAGIC (int32 0xFF271), the key
// length and the key "client:<matchkey> [-timeout=S]"; the server answers RPC_CODE_SUCCESS (or
// RPC_CODE_MISMATCH), then its own key "server:<key>", and hands the socket to the runtime's
// `rpc.ServerLoop` (RPCEndpoint::ServerLoop). Each session runs in a forked child with its own
// work directory (uploads land there); `-timeout=S` from the client kills a session that runs
// longer, after sending the client an RPCSessionTimeoutError. With --tracker the server
// registers with a TVM RPC tracker (json messages, RPC_TRACKER_MAGIC 0x2F271) under KEY and
// accepts the match key the tracker handed out.
//
// On start it prints one line, flushed: `optc_rpc_server: listening on HOST:PORT key=KEY`
// (with --port 0 the port the kernel chose). --once: serve one session, then exit.
// --emulated TEXT (e.g. "qemu-aarch64 -cpu cortex-a76") says the server runs under an emulator;
// clients read it through the global `optc.rpc.server_info` (a JSON string) and must then label
// times as emulated, never as the latency of the device.
#include "optc_main.h"

#include <tvm/ffi/any.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>

#include <arpa/inet.h>
#include <dlfcn.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

constexpr int32_t kRPCMagic = 0xFF271;
constexpr int32_t kRPCCodeMismatch = kRPCMagic + 2;
constexpr int32_t kTrackerMagic = 0x2F271;
constexpr int kTrackerSuccess = 0, kTrackerPut = 3, kTrackerUpdateInfo = 5, kTrackerPending = 7;

struct Fail : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void Log(const std::string& msg) { std::cerr << "optc_rpc_server: " << msg << std::endl; }

bool SendAll(int fd, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    p += k;
    n -= static_cast<size_t>(k);
  }
  return true;
}

bool RecvAll(int fd, void* data, size_t n) {
  char* p = static_cast<char*>(data);
  while (n > 0) {
    ssize_t k = recv(fd, p, n, 0);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    p += k;
    n -= static_cast<size_t>(k);
  }
  return true;
}

bool SendInt(int fd, int32_t v) { return SendAll(fd, &v, sizeof(v)); }  // little-endian hosts

bool SendStr(int fd, const std::string& s) {
  return SendInt(fd, static_cast<int32_t>(s.size())) && SendAll(fd, s.data(), s.size());
}

bool RecvStr(int fd, std::string* s, int32_t max_len = 1 << 20) {
  int32_t n = 0;
  if (!RecvAll(fd, &n, sizeof(n)) || n < 0 || n > max_len) return false;
  s->assign(static_cast<size_t>(n), '\0');
  return n == 0 || RecvAll(fd, &(*s)[0], static_cast<size_t>(n));
}

std::string JsonStr(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

std::vector<std::string> Split(const std::string& s) {
  std::istringstream is(s);
  std::vector<std::string> out;
  for (std::string w; is >> w;) out.push_back(w);
  return out;
}

std::pair<std::string, int> HostPort(const std::string& text) {
  size_t c = text.rfind(':');
  if (c == std::string::npos || c == 0) throw Fail("expected HOST:PORT, got " + text);
  return {text.substr(0, c), std::stoi(text.substr(c + 1))};
}

int Connect(const std::string& host, int port) {
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res) != 0 || !res)
    throw Fail("cannot resolve " + host);
  int fd = -1;
  for (addrinfo* a = res; a; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (fd >= 0 && connect(fd, a->ai_addr, a->ai_addrlen) == 0) break;
    if (fd >= 0) close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  if (fd < 0) throw Fail("cannot connect to " + host + ":" + std::to_string(port));
  return fd;
}

// ---------------------------------------------------------------- tracker (control plane)
class Tracker {
 public:
  Tracker(const std::string& addr, std::string key, int port, std::string custom_addr)
      : key_(std::move(key)), port_(port), custom_addr_(std::move(custom_addr)) {
    auto hp = HostPort(addr);
    fd_ = Connect(hp.first, hp.second);
    int32_t magic = 0;
    if (!SendInt(fd_, kTrackerMagic) || !RecvAll(fd_, &magic, 4) || magic != kTrackerMagic)
      throw Fail(addr + " is not a TVM RPC tracker");
    std::string addr_json = custom_addr_.empty() ? "null" : JsonStr(custom_addr_);
    Call("[" + std::to_string(kTrackerUpdateInfo) + ", {\"key\": " + JsonStr("server:" + key_) +
         ", \"addr\": [" + addr_json + ", " + std::to_string(port_) + "]}]");
  }
  ~Tracker() { close(fd_); }

  // Offer this server under a fresh match key; returns it.
  const std::string& Put() {
    static std::mt19937_64 rng(std::random_device{}());
    matchkey_ = key_ + ":" + std::to_string(std::uniform_real_distribution<double>(0, 1)(rng));
    std::string addr_json = custom_addr_.empty() ? "null" : JsonStr(custom_addr_);
    Call("[" + std::to_string(kTrackerPut) + ", " + JsonStr(key_) + ", [" + std::to_string(port_) +
         ", " + JsonStr(matchkey_) + "], " + addr_json + "]");
    idle_ = 0;
    return matchkey_;
  }

  // Called every period without a connection: a key handed to a client that never came is
  // replaced after a few periods (as python/tvm/rpc/server.py does).
  void Ping() {
    std::string reply = Request("[" + std::to_string(kTrackerPending) + "]");
    if (reply.find(JsonStr(matchkey_)) == std::string::npos) {
      if (++idle_ >= 3) {
        Log("no client came for the handed-out key: re-registering");
        Put();
      }
    } else {
      idle_ = 0;
    }
  }

  const std::string& matchkey() const { return matchkey_; }

 private:
  std::string Request(const std::string& msg) {
    std::string reply;
    if (!SendStr(fd_, msg) || !RecvStr(fd_, &reply)) throw Fail("lost the tracker connection");
    return reply;
  }
  void Call(const std::string& msg) {
    std::string reply = Request(msg);
    if (std::atoi(reply.c_str()) != kTrackerSuccess) throw Fail("tracker refused " + msg + ": " + reply);
  }

  int fd_ = -1;
  std::string key_;
  int port_;
  std::string custom_addr_;
  std::string matchkey_;
  int idle_ = 0;
};

// ---------------------------------------------------------------- session
std::string g_session_dir;
std::string g_server_info;

#if defined(__aarch64__)
const char* kArch = "aarch64";
#elif defined(__x86_64__)
const char* kArch = "x86_64";
#else
const char* kArch = "unknown";
#endif

void RegisterSessionEnv(const std::string& dir) {
  g_session_dir = dir;
  ffi::Function::SetGlobal(
      "tvm.rpc.server.workpath",
      ffi::Function::FromTyped([](ffi::String name) { return g_session_dir + "/" + std::string(name); }),
      true);
  ffi::Function::SetGlobal("tvm.rpc.server.load_module",
                           ffi::Function::FromTyped([](ffi::String name) {
                             std::string path = g_session_dir + "/" + std::string(name);
                             Log("load_module " + path);
                             return ffi::Module::LoadFromFile(path);
                           }),
                           true);
  ffi::Function::SetGlobal("optc.rpc.server_info",
                           ffi::Function::FromTyped([]() { return ffi::String(g_server_info); }), true);
}

[[noreturn]] void ServeChild(int conn, const std::string& dir) {
  int code = 0;
  try {
    if (chdir(dir.c_str()) != 0) throw Fail("cannot enter " + dir);
    RegisterSessionEnv(dir);
    ffi::Function::GetGlobalRequired("rpc.ServerLoop")(static_cast<int64_t>(conn));
  } catch (const ffi::Error& e) {
    Log(std::string("session error: ") + e.kind() + ": " + e.message());
    code = 1;
  } catch (const std::exception& e) {
    Log(std::string("session error: ") + e.what());
    code = 1;
  }
  close(conn);
  std::cout.flush();
  std::cerr.flush();
  _exit(code);
}

double TimeoutOf(const std::vector<std::string>& words) {
  for (size_t i = 1; i < words.size(); ++i)
    if (words[i].rfind("-timeout=", 0) == 0) return std::atof(words[i].c_str() + 9);
  return 0;
}

// One session: its work directory is made here and removed here once the child has ended,
// however it ended (a session killed on timeout leaves nothing behind either).
void Serve(int conn, double timeout, const std::string& workdir) {
  std::string tmpl = workdir + "/session-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) throw Fail("cannot create a session directory in " + workdir);
  const std::string dir(buf.data());
  pid_t pid = fork();
  if (pid < 0) {
    std::filesystem::remove_all(dir);
    throw Fail("fork failed");
  }
  if (pid == 0) ServeChild(conn, dir);
  auto start = std::chrono::steady_clock::now();
  int status = 0;
  while (true) {
    pid_t r = waitpid(pid, &status, timeout > 0 ? WNOHANG : 0);
    if (r == pid || (r < 0 && errno != EINTR)) break;
    if (r == 0) {
      double elapsed =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (elapsed >= timeout) {
        Log("session timed out after " + std::to_string(timeout) + " s: killing it");
        std::ostringstream msg;
        msg << "RPCSessionTimeoutError: Your " << timeout
            << "s session has expired, try to increase the \"session_timeout\" value.";
        try {
          ffi::Function::GetGlobalRequired("rpc.ReturnException")(static_cast<int64_t>(conn),
                                                                  ffi::String(msg.str()));
        } catch (...) {
        }
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  if (WIFSIGNALED(status)) Log("session ended by signal " + std::to_string(WTERMSIG(status)));
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  if (ec) Log("could not remove " + dir + ": " + ec.message());
  close(conn);
}

const char* kUsage =
    "usage: optc_rpc_server [--host ADDR] [--port N] [--key KEY] [--tracker HOST:PORT] "
    "[--custom-addr ADDR] [--workdir DIR] [--once] [--emulated TEXT]";

int Run(int argc, char** argv) {
  std::string host = "0.0.0.0", key, tracker_addr, custom_addr, workdir, emulated;
  int port = 9090;
  bool once = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw Fail(a + " needs a value; " + kUsage);
      return argv[++i];
    };
    if (a == "--host") host = next();
    else if (a == "--port") port = std::stoi(next());
    else if (a == "--key") key = next();
    else if (a == "--tracker") tracker_addr = next();
    else if (a == "--custom-addr") custom_addr = next();
    else if (a == "--workdir") workdir = next();
    else if (a == "--once") once = true;
    else if (a == "--emulated") emulated = next();
    else if (a == "-h" || a == "--help") {
      std::cout << kUsage << std::endl;
      return 0;
    } else throw Fail("unknown argument " + a + "; " + kUsage);
  }
  if (workdir.empty()) {
    const char* t = std::getenv("TMPDIR");
    workdir = t ? t : "/tmp";
  }
  mkdir(workdir.c_str(), 0755);
  g_server_info = std::string("{\"server\": \"optc_rpc_server\", \"arch\": ") + JsonStr(kArch) +
                  ", \"key\": " + JsonStr(key) + ", \"emulated\": " + JsonStr(emulated) + "}";
  signal(SIGPIPE, SIG_IGN);
  // Optional kernels (sort/topk/random) beside the binary, as in optc_runner.
  if (std::getenv("OPTC_RUNNER_NO_EXTRA") == nullptr) dlopen("libtvm_runtime_extra.so", RTLD_NOW | RTLD_GLOBAL);
  // Resolve the server loop now: a runtime without RPC support fails here, not per session.
  ffi::Function::GetGlobalRequired("rpc.ServerLoop");

  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res) != 0 || !res)
    throw Fail("cannot resolve " + host);
  int lfd = socket(res->ai_family, res->ai_socktype, res->ai_protocol);
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (lfd < 0 || bind(lfd, res->ai_addr, res->ai_addrlen) != 0 || listen(lfd, 8) != 0) {
    freeaddrinfo(res);
    throw Fail("cannot listen on " + host + ":" + std::to_string(port) + ": " + std::strerror(errno));
  }
  freeaddrinfo(res);
  sockaddr_storage bound{};
  socklen_t blen = sizeof(bound);
  getsockname(lfd, reinterpret_cast<sockaddr*>(&bound), &blen);
  port = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                           : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  std::cout << "optc_rpc_server: listening on " << host << ":" << port << " key=" << key << std::endl;

  std::unique_ptr<Tracker> tracker;
  if (!tracker_addr.empty()) {
    tracker.reset(new Tracker(tracker_addr, key, port, custom_addr));
    Log("registered with tracker " + tracker_addr + " as " + key);
  }
  while (true) {
    std::string expect = "client:" + (tracker ? tracker->Put() : key);
    int conn = -1;
    while (conn < 0) {
      if (tracker) {
        pollfd p{lfd, POLLIN, 0};
        int r = poll(&p, 1, 2000);
        if (r == 0) {
          tracker->Ping();
          expect = "client:" + tracker->matchkey();
          continue;
        }
      }
      conn = accept(lfd, nullptr, nullptr);
      if (conn < 0 && errno != EINTR) throw Fail(std::string("accept failed: ") + std::strerror(errno));
    }
    setsockopt(conn, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    int32_t magic = 0;
    std::string client_key;
    if (!RecvAll(conn, &magic, 4) || magic != kRPCMagic || !RecvStr(conn, &client_key, 4096)) {
      close(conn);  // not an RPC client (a port probe, say)
      continue;
    }
    std::vector<std::string> words = Split(client_key);
    if (words.empty() || words[0] != expect) {
      SendInt(conn, kRPCCodeMismatch);
      close(conn);
      Log("key mismatch: got '" + client_key + "', expected '" + expect + "'");
      continue;
    }
    if (!SendInt(conn, kRPCMagic) || !SendStr(conn, "server:" + key)) {
      close(conn);
      continue;
    }
    Log("session started (" + client_key + ")");
    Serve(conn, TimeoutOf(words), workdir);
    Log("session finished");
    if (once) break;
  }
  close(lfd);
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return optc::MainReportingErrors("optc_rpc_server", Run, argc, argv); }
