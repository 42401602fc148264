// kindling-jailer: builds the jail of one VM and starts its Node child inside it.
//
// Node is multithreaded from its first instruction, and unshare(CLONE_NEWNS) refuses a process
// whose threads share fs_struct; so the namespaces, the mounts and the credentials are set up here,
// in a small single-threaded program, before Node starts. lib/jail/launch.ts runs it as root with
// every path, id and limit spelled out on the command line (nothing is looked up or defaulted
// here); it decides nothing itself.
//
//   kindling-jailer --root DIR --uid N --gid N --hostname NAME --status-fd N
//                   [--new-pid-ns] [--netns PATH] [--cgroup DIR]... [--bind SRC:DST]...
//                   [--scratch NAME] [--keep-fds N] [--env K=V]... -- PROGRAM ARG...
//
// In order: unshare the IPC and UTS namespaces (and PID with --new-pid-ns), join the network
// namespace at --netns, fork. The child (PID 1 of the new PID namespace) unshares the mount
// namespace and makes every mount private, joins each --cgroup, sets its host name, bind-mounts
// DIR onto itself, bind-mounts
// each SRC read-only at DST inside it (the same path as on the host, so that the dynamic linker
// and require() find everything where they expect it), adds the writable --scratch directory
// owned by the jail's user, pivots into DIR and detaches the old root, remounts the root
// read-only, closes every descriptor above the --keep-fds first ones, empties the capability
// bounding set, drops to --uid/--gid with no supplementary groups and no capabilities left, sets
// no_new_privs and execs PROGRAM with exactly the --env variables.
//
// The launcher itself stays outside (in the host's mount namespace), waits for the child and
// reports on --status-fd, one line each: "pid <host pid>" after the fork, then "exit <code>" or
// "signal <number>" when the child ends; a step that fails reports "error <step> <errno>" (the
// child's own failures too) and the child then exits with 127; "oom <n>" before the end when its
// cgroup's memory limit made the kernel kill n processes. SIGTERM (also what the launcher
// gets when its parent dies: PR_SET_PDEATHSIG) makes it kill the child. Once the child has ended
// it removes the child's cgroups and the jail directory (DIR's parent) before its last report, so
// nothing outlives a VM even when the Node process that made it is killed.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <grp.h>
#include <linux/capability.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_LIST 256
#define STATUS_LINE 128

static int g_status_fd = -1;

/** Writes one status line (best effort: the parent treats a missing line as a failed launch). */
static void status_write(const char* line, int n) {
  if (n <= 0 || g_status_fd < 0) return;
  if (n >= STATUS_LINE) n = STATUS_LINE - 1;
  int off = 0;
  while (off < n) {
    ssize_t w = write(g_status_fd, line + off, (size_t)(n - off));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;
    off += (int)w;
  }
}

/** "<word> <number>\n". */
static void status_number(const char* word, long value) {
  char line[STATUS_LINE];
  status_write(line, snprintf(line, sizeof line, "%s %ld\n", word, value));
}

/** Reports a failed step and ends this process (the child with 127, the launcher with 1). */
static void fail(const char* step, int err, int code) {
  char line[STATUS_LINE];
  status_write(line, snprintf(line, sizeof line, "error %s %d\n", step, err));
  _exit(code);
}

struct options {
  const char* root;
  const char* hostname;
  const char* netns;
  const char* scratch;
  long uid, gid;
  int new_pid_ns;
  int keep_fds;
  const char* cgroups[MAX_LIST];
  int ncgroups;
  char* binds[MAX_LIST];
  int nbinds;
  char* env[MAX_LIST + 1];
  int nenv;
  char** argv;
};

static long parse_id(const char* s, const char* what) {
  char* end = NULL;
  errno = 0;
  long v = strtol(s, &end, 10);
  // uid_t is 32 bits and (uid_t)-1 means "leave unchanged" to setresuid: refused.
  if (errno != 0 || end == s || *end != '\0' || v < 0 || v >= 4294967295L) fail(what, EINVAL, 1);
  return v;
}

static void parse(int argc, char** argv, struct options* o) {
  enum { ROOT = 1, UID, GID, HOST, NETNS, PIDNS, CGROUP, BIND, SCRATCH, KEEP, ENV, STATUS };
  static const struct option longopts[] = {
      {"root", required_argument, 0, ROOT},       {"uid", required_argument, 0, UID},
      {"gid", required_argument, 0, GID},         {"hostname", required_argument, 0, HOST},
      {"netns", required_argument, 0, NETNS},     {"new-pid-ns", no_argument, 0, PIDNS},
      {"cgroup", required_argument, 0, CGROUP},   {"bind", required_argument, 0, BIND},
      {"scratch", required_argument, 0, SCRATCH}, {"keep-fds", required_argument, 0, KEEP},
      {"env", required_argument, 0, ENV},         {"status-fd", required_argument, 0, STATUS},
      {0, 0, 0, 0},
  };
  memset(o, 0, sizeof *o);
  o->uid = o->gid = -1;
  o->keep_fds = 3;
  int c;
  while ((c = getopt_long(argc, argv, "+", longopts, NULL)) != -1) {
    switch (c) {
      case ROOT: o->root = optarg; break;
      case UID: o->uid = parse_id(optarg, "uid"); break;
      case GID: o->gid = parse_id(optarg, "gid"); break;
      case HOST: o->hostname = optarg; break;
      case NETNS: o->netns = optarg; break;
      case PIDNS: o->new_pid_ns = 1; break;
      case CGROUP:
        if (o->ncgroups >= MAX_LIST) fail("args", E2BIG, 1);
        o->cgroups[o->ncgroups++] = optarg;
        break;
      case BIND:
        if (o->nbinds >= MAX_LIST) fail("args", E2BIG, 1);
        o->binds[o->nbinds++] = optarg;
        break;
      case SCRATCH: o->scratch = optarg; break;
      case KEEP: o->keep_fds = (int)parse_id(optarg, "keep-fds"); break;
      case ENV:
        if (o->nenv >= MAX_LIST) fail("args", E2BIG, 1);
        o->env[o->nenv++] = optarg;
        break;
      case STATUS: g_status_fd = (int)parse_id(optarg, "status-fd"); break;
      default: fail("args", EINVAL, 1);
    }
  }
  if (optind >= argc || !o->root || o->root[0] != '/' || !o->hostname || o->uid < 0 || o->gid < 0 ||
      o->keep_fds < 3 || o->keep_fds > 64) {
    fail("args", EINVAL, 1);
  }
  // The jail directory the launcher removes at the end is --root's parent: --root must be <dir>/root.
  const size_t rootLen = strlen(o->root);
  if (rootLen < 6 || strcmp(o->root + rootLen - 5, "/root") != 0) fail("args", EINVAL, 1);
  if (o->scratch && (strchr(o->scratch, '/') || o->scratch[0] == '.' || o->scratch[0] == '\0')) fail("args", EINVAL, 1);
  o->env[o->nenv] = NULL;
  o->argv = argv + optind;
}

/** mkdir -p of `path`'s parent directories (mode 0755); `path` is absolute. */
static int make_parents(char* path) {
  for (char* p = path + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    int r = mkdir(path, 0755);
    int err = errno;
    *p = '/';
    if (r != 0 && err != EEXIST) return err;
  }
  return 0;
}

/** Bind-mounts host `src` read-only at `dst` inside `root` (creating the mount point). */
static void bind_readonly(const char* root, char* spec) {
  char* colon = strchr(spec, ':');
  if (!colon) fail("bind", EINVAL, 127);
  *colon = '\0';
  const char* src = spec;
  const char* dst = colon + 1;
  if (src[0] != '/' || dst[0] != '/' || strstr(dst, "/..") || strstr(dst, "/./")) fail("bind", EINVAL, 127);
  struct stat st;
  if (stat(src, &st) != 0) fail("bind stat", errno, 127);
  char target[4096];
  if (snprintf(target, sizeof target, "%s%s", root, dst) >= (int)sizeof target) fail("bind", ENAMETOOLONG, 127);
  int err = make_parents(target);
  if (err) fail("bind mkdir", err, 127);
  if (S_ISDIR(st.st_mode)) {
    if (mkdir(target, 0755) != 0 && errno != EEXIST) fail("bind mkdir", errno, 127);
  } else {
    int fd = open(target, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0444);
    if (fd < 0) fail("bind placeholder", errno, 127);
    close(fd);
  }
  if (mount(src, target, NULL, MS_BIND, NULL) != 0) fail("bind mount", errno, 127);
  // A bind mount takes the flags of its source; read-only and the rest need a remount.
  if (mount(NULL, target, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) != 0) {
    fail("bind remount", errno, 127);
  }
}

/** Closes every descriptor from `first` up, except the status pipe. */
static void close_above(int first) {
  const unsigned status = (unsigned)g_status_fd;
  int r;
  if ((unsigned)first < status) {
    r = (int)syscall(SYS_close_range, (unsigned)first, status - 1, 0);
    if (r == 0) r = (int)syscall(SYS_close_range, status + 1, ~0u, 0);
  } else {
    r = (int)syscall(SYS_close_range, (unsigned)first, ~0u, 0);
  }
  if (r != 0) {
    // Kernels before 5.9: one by one, up to the descriptor limit.
    long max = sysconf(_SC_OPEN_MAX);
    if (max < 0 || max > 1 << 20) max = 1 << 20;
    for (int fd = first; fd < max; fd++) {
      if (fd != g_status_fd) close(fd);
    }
  }
}

/** The child: cgroups, host name, the root, descriptors, credentials, exec. Never returns. */
static void child(const struct options* o) {
  for (int i = 0; i < o->ncgroups; i++) {
    char procs[4096];
    if (snprintf(procs, sizeof procs, "%s/cgroup.procs", o->cgroups[i]) >= (int)sizeof procs) fail("cgroup", ENAMETOOLONG, 127);
    int fd = open(procs, O_WRONLY | O_CLOEXEC);
    if (fd < 0) fail("cgroup open", errno, 127);
    // "0" is the writing process itself, in v1 and v2 alike (and works from inside a PID namespace).
    if (write(fd, "0\n", 2) != 2) fail("cgroup join", errno, 127);
    close(fd);
  }
  if (sethostname(o->hostname, strlen(o->hostname)) != 0) fail("sethostname", errno, 127);

  const char* root = o->root;
  // pivot_root wants the new root to be a mount point.
  if (mount(root, root, NULL, MS_BIND, NULL) != 0) fail("root bind", errno, 127);
  for (int i = 0; i < o->nbinds; i++) bind_readonly(root, o->binds[i]);
  if (o->scratch) {
    char dir[4096];
    if (snprintf(dir, sizeof dir, "%s/%s", root, o->scratch) >= (int)sizeof dir) fail("scratch", ENAMETOOLONG, 127);
    if (mkdir(dir, 0700) != 0) fail("scratch mkdir", errno, 127);
    if (chown(dir, (uid_t)o->uid, (gid_t)o->gid) != 0) fail("scratch chown", errno, 127);
    if (mount(dir, dir, NULL, MS_BIND, NULL) != 0) fail("scratch bind", errno, 127);
    if (mount(NULL, dir, NULL, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0) fail("scratch remount", errno, 127);
  }
  if (chdir(root) != 0) fail("chdir root", errno, 127);
  // pivot_root(".", ".") stacks the old root on top of the new one; detaching it leaves the new.
  if (syscall(SYS_pivot_root, ".", ".") != 0) fail("pivot_root", errno, 127);
  if (umount2(".", MNT_DETACH) != 0) fail("umount old root", errno, 127);
  if (chdir("/") != 0) fail("chdir /", errno, 127);
  if (mount(NULL, "/", NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) != 0) fail("root remount", errno, 127);

  // Only the descriptors the parent meant for the child, and the status pipe (close-on-exec).
  close_above(o->keep_fds);

  // Capabilities: empty the bounding set while CAP_SETPCAP is still held, so that nothing this
  // process or its descendants exec can ever gain one; setresuid away from 0 then clears the
  // permitted, effective and ambient sets, and capset clears the inheritable one.
  for (int cap = 0; cap <= 63; cap++) {
    if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL) fail("PR_CAPBSET_DROP", errno, 127);
  }
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL) fail("PR_CAP_AMBIENT", errno, 127);
  if (setgroups(0, NULL) != 0) fail("setgroups", errno, 127);
  if (setresgid((gid_t)o->gid, (gid_t)o->gid, (gid_t)o->gid) != 0) fail("setresgid", errno, 127);
  if (setresuid((uid_t)o->uid, (uid_t)o->uid, (uid_t)o->uid) != 0) fail("setresuid", errno, 127);
  struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct data[2];
  memset(data, 0, sizeof data);
  if (syscall(SYS_capset, &hdr, data) != 0) fail("capset", errno, 127);
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) fail("PR_SET_NO_NEW_PRIVS", errno, 127);
  // Changing credentials cleared the parent-death signal; set it again.
  if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) fail("PR_SET_PDEATHSIG", errno, 127);

  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  execve(o->argv[0], o->argv, o->env);
  fail("execve", errno, 127);
}

/** nftw callback: removes what it is given (depth first, links not followed, one filesystem). */
static int remove_entry(const char* path, const struct stat* st, int type, struct FTW* ftw) {
  (void)st;
  (void)ftw;
  if (type == FTW_DP || type == FTW_D) rmdir(path);
  else unlink(path);
  return 0;  // go on with the rest whatever happened here
}

/**
 * After the child: its cgroups (emptied first: the kernel may still be tearing down what it ran)
 * and the jail directory (`--root`'s parent), so that nothing outlives a VM even when the Node
 * process that made it was killed. Best effort; the parent checks and retries.
 */
static void clean_up(const struct options* o) {
  // What the memory limit did goes to the parent first: the groups that count it go next.
  long oom = 0;
  for (int i = 0; i < o->ncgroups; i++) {
    static const char* const files[] = {"memory.events", "memory.oom_control"};
    for (int f = 0; f < 2; f++) {
      char file[4096];
      if (snprintf(file, sizeof file, "%s/%s", o->cgroups[i], files[f]) >= (int)sizeof file) continue;
      int fd = open(file, O_RDONLY | O_CLOEXEC);
      if (fd < 0) continue;
      char buf[1024];
      ssize_t n = read(fd, buf, sizeof buf - 1);
      close(fd);
      if (n <= 0) continue;
      buf[n] = '\0';
      for (char* p = buf; (p = strstr(p, "oom_kill ")) != NULL; p++) {
        if (p == buf || p[-1] == '\n') oom += strtol(p + 9, NULL, 10);
      }
    }
  }
  if (oom > 0) status_number("oom", oom);
  for (int i = 0; i < o->ncgroups; i++) {
    for (int attempt = 0; attempt < 500; attempt++) {
      if (rmdir(o->cgroups[i]) == 0 || errno == ENOENT) break;
      if (errno != EBUSY) break;
      char file[4096];
      if (snprintf(file, sizeof file, "%s/cgroup.kill", o->cgroups[i]) < (int)sizeof file) {
        int fd = open(file, O_WRONLY | O_CLOEXEC);
        if (fd >= 0) {
          if (write(fd, "1", 1) < 0) { /* v1 or an old kernel: wait for the members to go */ }
          close(fd);
        }
      }
      struct timespec ts = {0, 10 * 1000 * 1000};
      nanosleep(&ts, NULL);
    }
  }
  char dir[4096];
  if (snprintf(dir, sizeof dir, "%s", o->root) < (int)sizeof dir) {
    char* slash = strrchr(dir, '/');
    if (slash && slash != dir) {
      *slash = '\0';
      nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
    }
  }
}

int main(int argc, char** argv) {
  struct options o;
  parse(argc, argv, &o);
  if (g_status_fd < 0) return 1;
  if (fcntl(g_status_fd, F_SETFD, FD_CLOEXEC) != 0) fail("status fd", errno, 1);
  if (geteuid() != 0) fail("geteuid", EPERM, 1);

  // The launcher waits for these instead of dying of them: SIGTERM (the parent's stop, or its
  // death through PR_SET_PDEATHSIG), SIGINT, SIGHUP end the child; SIGCHLD says it ended.
  sigset_t wait_for;
  sigemptyset(&wait_for);
  sigaddset(&wait_for, SIGCHLD);
  sigaddset(&wait_for, SIGTERM);
  sigaddset(&wait_for, SIGINT);
  sigaddset(&wait_for, SIGHUP);
  sigprocmask(SIG_BLOCK, &wait_for, NULL);
  const pid_t parent = getppid();
  if (prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0) != 0) fail("PR_SET_PDEATHSIG", errno, 1);
  if (getppid() != parent) return 1;  // the parent died before the line above

  // The mount namespace is the child's alone (it unshares it itself): the launcher stays in the
  // host's, where it can remove the jail afterwards.
  int flags = CLONE_NEWIPC | CLONE_NEWUTS | (o.new_pid_ns ? CLONE_NEWPID : 0);
  if (unshare(flags) != 0) fail("unshare", errno, 1);
  if (o.netns) {
    int fd = open(o.netns, O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail("netns open", errno, 1);
    if (setns(fd, CLONE_NEWNET) != 0) fail("setns", errno, 1);
    close(fd);
  }

  const pid_t self = getpid();
  const pid_t pid = fork();
  if (pid < 0) fail("fork", errno, 1);
  if (pid == 0) {
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) fail("PR_SET_PDEATHSIG", errno, 127);
    // Outside a new PID namespace the parent can be checked; inside, getppid() is 0.
    if (!o.new_pid_ns && getppid() != self) _exit(127);
    if (unshare(CLONE_NEWNS) != 0) fail("unshare(CLONE_NEWNS)", errno, 127);
    // Nothing mounted from here on may propagate back to the host's mount namespace.
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) fail("mount private", errno, 127);
    child(&o);
  }
  status_number("pid", (long)pid);
  // The child's descriptors are its own: holding them here would keep the parent from seeing the
  // control socket close when the child dies.
  for (int fd = 3; fd < o.keep_fds; fd++) {
    if (fd != g_status_fd) close(fd);
  }
  int status = 0;
  for (;;) {
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (r < 0 && errno != EINTR) fail("waitpid", errno, 1);
    siginfo_t info;
    if (sigwaitinfo(&wait_for, &info) < 0) continue;
    // Its own pid cannot have been reused: the child is not reaped yet.
    if (info.si_signo != SIGCHLD) kill(pid, SIGKILL);
  }
  clean_up(&o);
  if (WIFSIGNALED(status)) status_number("signal", WTERMSIG(status));
  else status_number("exit", WEXITSTATUS(status));
  return 0;
}
