"""Run untrusted Python programs (model completions) in a sandbox; docs/sandbox.md.

    run_program(source)                      -> SandboxResult   (run a whole program)
    check(program, tests, entry_point)       -> CheckResult     (HumanEval style: the tests
                                                define check(candidate); one process runs both)
    check_many(items, workers)               -> [CheckResult]   (threads, bounded queue, input order)

Every run gets a fresh temporary work directory (gone afterwards), an empty environment,
its own process group with a wall-clock timeout (SIGKILL to the whole group, so ignoring
SIGTERM does not help), and resource limits (RLIMIT_CPU, _AS, _NPROC, _FSIZE, _NOFILE,
_CORE=0). The program (and the tests) reach the sandboxed interpreter on stdin, never as
files, so a program cannot read the tests it is checked with. Two modes (`sandbox_mode()`,
probed once):

* "bwrap": bubblewrap (https://github.com/containers/bubblewrap) adds new network, PID, IPC
  and UTS namespaces, a read-only view of the filesystem except a private, size-limited
  /tmp (the work directory), and empty /root and /home. Run as root, the program gives up
  root for a per-run unprivileged uid before any of its code runs, which is what makes
  RLIMIT_NPROC count (the kernel exempts uid 0 from it, user namespace or not; see
  setrlimit(2) and fork(2)). Run as another user, bwrap makes a user namespace and the limit
  counts the sandbox's own processes.
* "rlimits": the fallback when bwrap is missing or fails its start-up self-test: only the
  limits, process group, empty environment and temporary cwd; no network or filesystem
  isolation. A warning says so once.

The limits are set by a small trusted runner (`_RUNNER`, passed with `python -c`) before
it reads the program, instead of a preexec_fn: preexec_fn is not safe in a process with
threads (Python's subprocess documentation), and `check_many` uses threads.

The runner reports the outcome as a JSON line on a dedicated pipe, prefixed with a random
nonce that the parent sends on stdin and the runner reads before the program runs, so that
printing "passed", exiting with status 0 or writing a result file does not count as passing.
Limit: the program runs in the runner's interpreter, so a program that deliberately searches
the interpreter's memory (frames, gc) for the nonce could forge a result; so could one whose
return values override __eq__ (the tests compare with ==). docs/sandbox.md lists what holds.
"""
from __future__ import annotations

import json
import logging
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

log = logging.getLogger(__name__)

PASSED, FAILED, RUNTIME_ERROR, TIMEOUT, COMPILE_ERROR, KILLED = (
    "passed", "failed", "runtime_error", "timeout", "compile_error", "killed")
STATUSES = (PASSED, FAILED, RUNTIME_ERROR, TIMEOUT, COMPILE_ERROR, KILLED)
MODES = ("bwrap", "rlimits")
MODE_ENV = "RLHF_SANDBOX_MODE"   # auto (default) | bwrap (required: error if unusable) | rlimits
UID_BASE_ENV = "RLHF_SANDBOX_UID_BASE"
UID_BASE = int(os.environ.get(UID_BASE_ENV, 61000))  # root drops to UID_BASE + slot, one per concurrent run
UID_SLOTS = 1000
OUTPUT_KILL_FACTOR = 8           # a stream past max_output_bytes x this kills the run
PATH = "/usr/local/bin:/usr/bin:/bin"
HIDDEN_DIRS = ("/root", "/home")  # empty tmpfs in bwrap mode: secrets in home directories stay out

DEFAULTS: dict[str, Any] = dict(timeout_s=5.0, memory_mb=512, max_procs=16, max_file_mb=16,
                                max_open_files=64, max_output_bytes=1 << 20)


@dataclass
class SandboxResult:
    """The typed outcome of one run.

    status: passed (the program ran to completion / every test passed) | failed (a test's
    assertion failed; `failed_test` names it) | runtime_error (an exception, or an exit
    without a result) | timeout (wall clock) | compile_error (SyntaxError; `error` has the
    message) | killed (by a resource limit or signal other than our timeout, or by the
    output limit; `reason` says which).
    """

    status: str
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0
    failed_test: str | None = None
    error: str | None = None
    reason: str | None = None
    mode: str = ""
    truncated: bool = False

    @property
    def passed(self) -> bool:
        return self.status == PASSED


CheckResult = SandboxResult


# --- the runner: trusted code that runs first in the sandboxed interpreter ----------------------
# argv: [limits json, uid to drop to or -1, result fd]; stdin: nonce line, then JSON
# {"program", "tests" (null: run a program), "entry_point"}.
_RUNNER = r'''
import os, sys, json, resource
_a = json.loads(sys.argv[1]); _uid = int(sys.argv[2]); _fd = int(sys.argv[3])
for _name, _v in _a.items():
    resource.setrlimit(getattr(resource, _name), (_v, _v))
if _uid >= 0:
    os.setgroups([]); os.setgid(_uid); os.setuid(_uid)
_data = []
while True:
    _c = os.read(0, 1 << 16)
    if not _c:
        break
    _data.append(_c)
_nonce, _, _spec = b"".join(_data).partition(b"\n")
_spec = json.loads(_spec)
del _data
_dn = os.open(os.devnull, os.O_RDONLY); os.dup2(_dn, 0); os.close(_dn)
os.set_inheritable(_fd, False)
_write, _dumps, _exit = os.write, json.dumps, os._exit
def _report(status, **kw):
    kw["status"] = status
    try:
        sys.stdout.flush(); sys.stderr.flush()
    except BaseException:
        pass
    _write(_fd, b"\n" + _nonce + b" " + _dumps(kw).encode() + b"\n")
    _exit(0)
def _last(e):
    import traceback
    return "".join(traceback.format_exception_only(type(e), e)).strip()[-2000:]
def _main(spec):
    src, tests, entry = spec["program"], spec["tests"], spec["entry_point"]
    spec.clear()
    try:
        code = compile(src, "program.py", "exec")
    except (SyntaxError, ValueError, MemoryError, RecursionError, OverflowError) as e:
        _report("compile_error", error=_last(e))
    tcode = None
    if tests is not None:
        try:
            tcode = compile(tests, "tests.py", "exec")
        except SyntaxError as e:
            _report("compile_error", error="tests: " + _last(e), where="tests")
    del src, tests
    g = {"__name__": "__main__" if tcode is None else "candidate", "__builtins__": __builtins__}
    try:
        exec(code, g)
    except SystemExit as e:
        if tcode is None and e.code in (None, 0):
            _report("passed")
        _report("runtime_error", error="SystemExit: %r" % (e.code,))
    except BaseException as e:
        _report("runtime_error", error=_last(e))
    if tcode is None:
        _report("passed")
    try:
        exec(tcode, g)
        if entry not in g:
            _report("runtime_error", error="NameError: entry point %r is not defined" % entry)
        g["check"](g[entry])
    except AssertionError as e:
        import traceback
        lineno = None
        for fr in reversed(traceback.extract_tb(e.__traceback__)):
            if fr.filename == "tests.py":
                lineno = fr.lineno
                break
        _report("failed", line=lineno, message=str(e)[:500])
    except SystemExit as e:
        _report("runtime_error", error="SystemExit: %r" % (e.code,))
    except BaseException as e:
        _report("runtime_error", error=_last(e))
    _report("passed")
_main(_spec)
'''


# --- mode probe ------------------------------------------------------------------------------
_mode_lock = threading.Lock()
_mode: str | None = None


def sandbox_mode() -> str:
    """The active isolation mode, probed once per process: "bwrap" when bubblewrap is on PATH
    and runs a trivial program correctly, else "rlimits" (with a warning). RLHF_SANDBOX_MODE=
    bwrap makes an unusable bwrap an error; =rlimits skips bwrap."""
    global _mode
    with _mode_lock:
        if _mode is None:
            _mode = _probe_mode()
        return _mode


def _reset_mode_for_tests() -> None:
    global _mode
    with _mode_lock:
        _mode = None


def _probe_mode() -> str:
    want = os.environ.get(MODE_ENV, "auto").strip().lower() or "auto"
    if want not in ("auto", *MODES):
        raise ValueError(f"{MODE_ENV}={want!r} unknown; valid choices: auto, {', '.join(MODES)}")
    if want == "rlimits":
        _warn_fallback(f"{MODE_ENV}=rlimits")
        return "rlimits"
    why = _bwrap_self_test()
    if why is None:
        return "bwrap"
    if want == "bwrap":
        raise RuntimeError(f"{MODE_ENV}=bwrap but bubblewrap is unusable: {why}")
    _warn_fallback(why)
    return "rlimits"


def _bwrap_self_test() -> str | None:
    """None when a trivial program runs correctly under bwrap, else why not."""
    global _bwrap_path
    _bwrap_path = shutil.which("bwrap")
    if _bwrap_path is None:
        return "bwrap not found on PATH (install the bubblewrap package)"
    try:
        res = _run(MARKER_PROGRAM, None, None, "bwrap", dict(DEFAULTS, timeout_s=20.0))
    except OSError as e:
        return f"bwrap failed to start: {e}"
    if res.status != PASSED or res.stdout.strip() != "sandbox-ok":
        return f"bwrap self-test gave status {res.status!r}: {(res.stderr or res.error or '').strip()[-300:]}"
    return None


_bwrap_path: str | None = None
MARKER_PROGRAM = "print('sandbox-ok')\n"


def _warn_fallback(why: str) -> None:
    log.warning(
        "code sandbox: running in 'rlimits' mode (%s). Lost guarantees: no network isolation "
        "(programs can open sockets), no filesystem isolation (programs can read and write "
        "whatever this user can), no PID namespace (programs can signal host processes), and as "
        "root RLIMIT_NPROC may not apply. Install bubblewrap (apt-get install bubblewrap) for "
        "the isolated 'bwrap' mode.", why)


# --- uid slots (root only) -------------------------------------------------------------------
_slot_lock = threading.Lock()
_slots_used: set[int] = set()


def _acquire_uid() -> int:
    with _slot_lock:
        for i in range(UID_SLOTS):
            if i not in _slots_used:
                _slots_used.add(i)
                return UID_BASE + i
    raise RuntimeError(f"more than {UID_SLOTS} concurrent sandbox runs")


def _release_uid(uid: int) -> None:
    with _slot_lock:
        _slots_used.discard(uid - UID_BASE)


def _interpreter() -> tuple[str, list[str]]:
    """The real (non-venv) interpreter and the directories it needs visible."""
    exe = os.path.realpath(sys.executable)
    need = {os.path.realpath(sys.base_prefix), os.path.dirname(os.path.dirname(exe))}
    return exe, sorted(need)


def _prefix_traversable(paths: Iterable[str]) -> bool:
    """Whether a user other than the owner can reach these directories (rlimits mode drops
    root only then: the interpreter must still import its standard library)."""
    for p in paths:
        cur = "/"
        for part in [x for x in p.split("/") if x]:
            cur = os.path.join(cur, part)
            try:
                if not os.stat(cur).st_mode & 0o001:
                    return False
            except OSError:
                return False
    return True


def _ancestors_under(path: str, roots: Sequence[str]) -> list[str]:
    """Directories strictly between a tmpfs root and `path` (bwrap would create them 0700)."""
    for root in roots:
        if path.startswith(root + "/"):
            parts = path[len(root) + 1:].split("/")[:-1]
            return [os.path.join(root, *parts[:i + 1]) for i in range(len(parts))]
    return []


def _bwrap_argv(tmp_mb: int, visible: list[str], as_root: bool) -> list[str]:
    """bwrap's command line. The program's work directory is the private /tmp, a tmpfs of
    `tmp_mb` (so nothing it writes reaches the host's disk, and the total is bounded)."""
    if as_root:
        # Privileged bwrap: no user namespace, so the uid the runner drops to is a real host
        # uid and RLIMIT_NPROC counts it. Capabilities other than those needed to drop are
        # gone from the start.
        ns = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
              "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        ns = ["--unshare-all"]
    argv = [_bwrap_path or "bwrap", *ns, "--die-with-parent", "--ro-bind", "/", "/",
            "--perms", "1777", "--size", str(tmp_mb << 20), "--tmpfs", "/tmp",
            "--proc", "/proc", "--dev", "/dev"]
    tmpfs_roots = ["/tmp"]
    for d in HIDDEN_DIRS:
        if os.path.isdir(d):
            argv += ["--perms", "0755", "--size", str(1 << 20), "--tmpfs", d]
            tmpfs_roots.append(d)
    for p in visible:
        if any(p == r or p.startswith(r + "/") for r in tmpfs_roots):
            for a in _ancestors_under(p, tmpfs_roots):
                argv += ["--perms", "0755", "--dir", a]
            argv += ["--ro-bind", p, p]
    argv += ["--chdir", "/tmp", "--clearenv", "--setenv", "PATH", PATH, "--setenv", "HOME", "/tmp", "--"]
    return argv


def _limits(opts: dict[str, Any], with_nproc: bool) -> dict[str, int]:
    lim = {
        "RLIMIT_CPU": int(math.ceil(opts["timeout_s"])) + 1,
        "RLIMIT_AS": int(opts["memory_mb"]) << 20,
        "RLIMIT_FSIZE": int(opts["max_file_mb"]) << 20,
        "RLIMIT_NOFILE": int(opts["max_open_files"]),
        "RLIMIT_CORE": 0,
    }
    if with_nproc:
        lim["RLIMIT_NPROC"] = int(opts["max_procs"])
    return lim


def _run(program: str, tests: str | None, entry_point: str | None, mode: str, opts: dict[str, Any]) -> SandboxResult:
    start = time.monotonic()
    is_root = os.geteuid() == 0
    exe, visible = _interpreter()
    if mode == "bwrap":
        drop = is_root
    else:
        drop = is_root and _prefix_traversable(visible)
    # Non-root bwrap counts NPROC inside its own user namespace; non-root rlimits mode would
    # count every process of this user, so the limit is left out there.
    with_nproc = drop or (mode == "bwrap" and not is_root)
    uid = _acquire_uid() if drop else -1
    # bwrap: the cwd is the sandbox's private /tmp; the host directory only serves as the
    # cwd bwrap starts from. rlimits: it is the program's cwd.
    workdir = tempfile.mkdtemp(prefix="sandbox-")
    payload = json.dumps({"program": program, "tests": tests, "entry_point": entry_point or ""}).encode()
    try:
        if drop:
            os.chown(workdir, uid, uid)
            os.chmod(workdir, 0o711)  # bwrap (capabilities dropped) must chdir into it as root
        r_fd, w_fd = os.pipe()
        try:
            argv = [exe, "-I", "-S", "-c", _RUNNER, json.dumps(_limits(opts, with_nproc)), str(uid), str(w_fd)]
            if mode == "bwrap":
                tmp_mb = max(16, 4 * int(opts["max_file_mb"]))
                argv = _bwrap_argv(tmp_mb, visible, as_root=is_root) + argv
            env = {} if mode == "bwrap" else {"PATH": PATH, "HOME": workdir}
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    cwd=workdir, env=env, start_new_session=True, pass_fds=(w_fd,), close_fds=True)
        finally:
            os.close(w_fd)
        try:
            out = _collect(proc, r_fd, payload, opts)
        finally:
            os.close(r_fd)
    finally:
        if uid >= 0 and mode != "bwrap":
            # Without a PID namespace a process that left the group (setsid) outlives the
            # group kill; the uid is this run's alone, so every process of it goes.
            _kill_uid(uid)
        shutil.rmtree(workdir, ignore_errors=True)
        if uid >= 0:
            _release_uid(uid)
    res = _classify(out, mode, tests)
    res.seconds = time.monotonic() - start
    return res


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _pids_of_uid(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def _kill_uid(uid: int) -> None:
    for _ in range(10):
        pids = _pids_of_uid(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.01)


def _collect(proc: subprocess.Popen, r_fd: int, payload: bytes, opts: dict[str, Any]) -> dict[str, Any]:
    """Send nonce + payload on stdin, read stdout/stderr/result incrementally (bounded) until
    the process exits or the deadline passes; kill the whole process group either way."""
    nonce = secrets.token_hex(16).encode()
    pending = memoryview(nonce + b"\n" + payload)
    cap = int(opts["max_output_bytes"])
    deadline = time.monotonic() + float(opts["timeout_s"])
    bufs = {"stdout": bytearray(), "stderr": bytearray(), "result": bytearray()}
    totals = dict.fromkeys(bufs, 0)
    sel = selectors.DefaultSelector()
    os.set_blocking(proc.stdin.fileno(), False)
    sel.register(proc.stdin, selectors.EVENT_WRITE, "stdin")
    sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
    sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
    sel.register(r_fd, selectors.EVENT_READ, "result")
    timed_out = over_output = False
    exited_at = None
    try:
        while sel.get_map():
            now = time.monotonic()
            if exited_at is None and proc.poll() is not None:
                # The main process is gone: kill anything it left behind in its group, then
                # drain what is still buffered in the pipes for a moment.
                exited_at = now
                _kill_group(proc)
            if exited_at is not None and now - exited_at > 1.0:
                break
            if exited_at is None and now >= deadline:
                timed_out = True
                _kill_group(proc)
                break
            wait = 0.05 if exited_at is not None else min(0.05, max(0.0, deadline - now))
            for key, _ in sel.select(timeout=wait):
                name = key.data
                if name == "stdin":
                    try:
                        pending = pending[os.write(key.fd, pending[:1 << 16]):]
                    except BlockingIOError:
                        continue
                    except OSError:  # the child is gone (EPIPE)
                        pending = pending[:0]
                    if not pending:
                        sel.unregister(key.fileobj)
                        proc.stdin.close()
                    continue
                try:
                    chunk = os.read(key.fd, 1 << 16)
                except OSError:
                    chunk = b""
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                totals[name] += len(chunk)
                limit = cap if name != "result" else 1 << 16
                room = limit - len(bufs[name])
                if room > 0:
                    bufs[name] += chunk[:room]
                if name != "result" and totals[name] > cap * OUTPUT_KILL_FACTOR:
                    over_output = True
            if over_output:
                _kill_group(proc)
                break
    finally:
        sel.close()
        _kill_group(proc)
        for f in (proc.stdin, proc.stdout, proc.stderr):
            try:
                f.close()
            except OSError:
                pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    result = None
    for line in bytes(bufs["result"]).split(b"\n"):
        if line.startswith(nonce + b" "):
            try:
                result = json.loads(line[len(nonce) + 1:].decode())
            except ValueError:
                result = None
    return dict(returncode=proc.returncode, stdout=bytes(bufs["stdout"]), stderr=bytes(bufs["stderr"]),
                truncated=totals["stdout"] > cap or totals["stderr"] > cap, timed_out=timed_out,
                over_output=over_output, result=result)


def _signal_name(rc: int | None, mode: str) -> str | None:
    """The signal that ended the program, from a returncode (negative: the direct child was
    signalled; bwrap reports a signalled child as 128 + signal)."""
    if rc is None:
        return None
    sig = -rc if rc < 0 else (rc - 128 if mode == "bwrap" and 128 < rc < 128 + 65 else None)
    if sig is None:
        return None
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _failed_test(tests: str | None, r: dict[str, Any]) -> str:
    """The failing assertion: its line of the tests and the assertion message."""
    line = None
    if tests and isinstance(r.get("line"), int) and 0 < r["line"] <= len(tests.splitlines()):
        line = tests.splitlines()[r["line"] - 1].strip()
    text = line or (f"line {r['line']}" if r.get("line") else "assertion")
    return text + (f": {r['message']}" if r.get("message") else "")


def _classify(out: dict[str, Any], mode: str, tests: str | None = None) -> SandboxResult:
    res = SandboxResult(status=RUNTIME_ERROR, returncode=out["returncode"], mode=mode, truncated=out["truncated"],
                        stdout=out["stdout"].decode("utf-8", "replace"), stderr=out["stderr"].decode("utf-8", "replace"))
    r = out["result"]
    if out["timed_out"]:
        res.status, res.reason = TIMEOUT, "wall-clock timeout"
    elif out["over_output"]:
        res.status, res.reason = KILLED, "output limit"
    elif r is not None and r.get("status") in STATUSES:
        res.status = r["status"]
        res.error = r.get("error")
        if res.status == FAILED:
            res.failed_test = _failed_test(tests, r)
    elif (sig := _signal_name(out["returncode"], mode)) is not None:
        res.status, res.reason = KILLED, sig
    else:
        res.status = RUNTIME_ERROR
        res.error = f"exited with status {out['returncode']} without reporting a result"
    return res


def _options(overrides: dict[str, Any]) -> dict[str, Any]:
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown sandbox option(s): {', '.join(sorted(unknown))}; valid: {', '.join(DEFAULTS)}")
    opts = dict(DEFAULTS)
    opts.update({k: v for k, v in overrides.items() if v is not None})
    return opts


def run_program(source: str, *, timeout_s: float | None = None, memory_mb: int | None = None,
                max_procs: int | None = None, max_file_mb: int | None = None, max_open_files: int | None = None,
                max_output_bytes: int | None = None, mode: str | None = None) -> SandboxResult:
    """Run `source` as a program (`__name__ == "__main__"`). passed = ran to completion
    (a SystemExit with status 0 counts)."""
    opts = _options(dict(timeout_s=timeout_s, memory_mb=memory_mb, max_procs=max_procs, max_file_mb=max_file_mb,
                         max_open_files=max_open_files, max_output_bytes=max_output_bytes))
    return _run(source, None, None, mode or sandbox_mode(), opts)


def check(program: str, tests: str, entry_point: str, *, timeout_s: float | None = None, memory_mb: int | None = None,
          max_procs: int | None = None, max_file_mb: int | None = None, max_open_files: int | None = None,
          max_output_bytes: int | None = None, mode: str | None = None) -> CheckResult:
    """Run `program`, then `tests` (which define `check(candidate)`), then
    `check(<entry_point>)`, in one sandboxed process. passed = check returned."""
    opts = _options(dict(timeout_s=timeout_s, memory_mb=memory_mb, max_procs=max_procs, max_file_mb=max_file_mb,
                         max_open_files=max_open_files, max_output_bytes=max_output_bytes))
    return _run(program, tests, entry_point, mode or sandbox_mode(), opts)


def check_many(items: Sequence[tuple[str, str, str]], workers: int = 2, queue_size: int | None = None,
               **options: Any) -> list[CheckResult]:
    """check() over (program, tests, entry_point) items with `workers` threads (each run is its
    own subprocess); at most workers + queue_size runs are pending at once. Input order."""
    return SandboxPool(workers=workers, queue_size=queue_size, **options).check_many(items)


class SandboxPool:
    """Parallel checks: `workers` threads each spawn one sandboxed subprocess at a time; the
    submission queue is bounded (queue_size, default 2 x workers), results keep input order."""

    def __init__(self, workers: int = 2, queue_size: int | None = None, **options: Any):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self.queue_size = 2 * workers if queue_size is None else queue_size
        self.options = _options(options)

    def check_many(self, items: Sequence[tuple[str, str, str]]) -> list[CheckResult]:
        mode = sandbox_mode()
        slots = threading.BoundedSemaphore(self.workers + max(0, self.queue_size))
        results: list[CheckResult | None] = [None] * len(items)

        def one(i: int, program: str, tests: str, entry_point: str) -> None:
            try:
                results[i] = _run(program, tests, entry_point, mode, self.options)
            finally:
                slots.release()

        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="sandbox") as ex:
            futures = []
            for i, (program, tests, entry_point) in enumerate(items):
                slots.acquire()
                futures.append(ex.submit(one, i, program, tests, entry_point))
            for fut in futures:
                fut.result()
        return results  # type: ignore[return-value]


def benchmark(n: int = 100, workers: int = 1) -> float:
    """Checks per second of a trivial passing program (docs/sandbox.md)."""
    items = [("def f(x):\n    return x + 1\n", "def check(candidate):\n    assert candidate(1) == 2\n", "f")] * n
    sandbox_mode()
    start = time.monotonic()
    results = check_many(items, workers=workers)
    seconds = time.monotonic() - start
    bad = [r.status for r in results if r.status != PASSED]
    if bad:
        raise RuntimeError(f"benchmark program did not pass: {bad[:3]}")
    return n / seconds


def report(n: int = 100, workers: Sequence[int] = (1, 2)) -> None:
    """Print the mode and checks per second:
    python -c "from envs.code.sandbox import report; report()"."""
    print(f"mode: {sandbox_mode()} (uid {os.geteuid()}, {os.cpu_count()} CPUs)")
    for w in workers:
        print(f"workers={w}: {benchmark(n, w):.1f} checks/s over {n} checks")
