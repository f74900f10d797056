"""Network partitions between cluster nodes on 127.0.0.1: nftables rules keyed on each node's uid.

All nodes share one address, so a packet's ports alone cannot tell which node
sent it (a client's port is ephemeral). Each node therefore runs under a uid
of its own (`UidNode`, started through `setpriv`), and `Firewall` cuts one
node off with a table of its own: packets the cut node sends to the others'
gRPC ports, or from its own gRPC port, and packets the others send to its gRPC
port, mark their connection (`ct mark`); every packet of a marked connection
is dropped, in both directions. Client ports are never touched. Healing
deletes the table. Uids are reserved with a lock file for as long as the
reservation is held, so concurrent runs never share one. Needs root and the
`nft` tool (installed with apt-get when missing).
"""

import fcntl
import itertools
import os
import pwd
import random
import re
import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

from tests.helpers import HOST, ServerProcess

#: Uids tried for nodes; one that /etc/passwd lists, or that another run holds, is passed over.
UID_RANGE = range(47000, 48000)
LOCK_DIR = Path("/tmp/geomys-partition-uids")
#: Tables are named after the pytest process, so a run tells its own from a dead run's.
TABLE_PREFIX = "geomys_partition_"
NFT_TIMEOUT = 30
INSTALL_TIMEOUT = 600
# Connection marks of this process: a new one for every cut, so a connection marked
# by an earlier cut is not dropped by a later one that spares it.
_marks = itertools.count(random.SystemRandom().randrange(1, 1 << 30))


class PartitionUnavailable(Exception):
    """The kernel or the sandbox refuses what a partition needs; the reason is the message."""


class Endpoint(NamedTuple):
    """What the firewall knows of a node: the uid its process runs under and its gRPC port."""

    uid: int
    grpc_port: int


def nft_path() -> Optional[str]:
    """Where `nft` is: on the PATH, else in the sbin directories a PATH may lack (None: not installed)."""
    return shutil.which("nft") or shutil.which("nft", path="/usr/sbin:/sbin")


def nft(script: str = "", *args: str) -> str:
    """Run `nft ARGS` (with `script` on stdin for `-f -`); return stdout, raise on failure."""
    done = subprocess.run([nft_path() or "nft", *args], input=script, capture_output=True, text=True,
                          timeout=NFT_TIMEOUT)
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, ["nft", *args], done.stdout, done.stderr)
    return done.stdout


def ensure_nft() -> None:
    """Make `nft` usable: install its Debian package if missing, then create and delete a probe table.

    `setpriv` (util-linux) is installed the same way if missing. Raises
    PartitionUnavailable when the process is not root or the kernel refuses
    nftables (the one reason the scenarios are skipped); a failed install is
    an error of the environment and raises RuntimeError.
    """
    if os.geteuid() != 0:
        raise PartitionUnavailable("network partitions need root (nftables rules, processes under other uids)")
    missing = [package for package, found in (("nftables", nft_path()), ("util-linux", shutil.which("setpriv")))
               if found is None]
    if missing:
        apt_install(missing)
    # The probe has the rules of a real cut (uid match, connection marks), on ports no one uses.
    probe = "%sprobe_%d" % (TABLE_PREFIX, os.getpid())
    unused = [Endpoint(UID_RANGE.start + n, n + 1) for n in range(3)]
    try:
        nft(partition_ruleset(probe, 1, unused[0], unused[1:]), "-f", "-")
        nft("", "delete", "table", "ip", probe)
    except subprocess.CalledProcessError as exc:
        raise PartitionUnavailable("the kernel refuses an nftables table: %s" % exc.stderr.strip()) from None
    remove_stale_tables()


def apt_install(packages: list[str]) -> None:
    """Install Debian packages (apt-get update first); raise with apt's own words if it fails."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    lock = ["-o", "DPkg::Lock::Timeout=300"]   # another run may be installing right now
    for argv in (["apt-get", *lock, "update", "-q"], ["apt-get", *lock, "install", "-y", "-q", *packages]):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, env=env)
        if done.returncode != 0:
            raise RuntimeError("%s failed (status %d): %s" % (" ".join(argv), done.returncode,
                                                             done.stderr.strip()[-2000:]))


def remove_stale_tables() -> None:
    """Delete partition tables left by runs whose process is gone (killed before their teardown)."""
    for name, pid in re.findall(r"^table ip (%s(?:probe_)?(\d+))$" % TABLE_PREFIX, nft("", "list", "tables"), re.M):
        if not Path("/proc", pid).exists():
            nft("", "delete", "table", "ip", name)


def partition_ruleset(table: str, mark: int, cut: Endpoint, others: Sequence[Endpoint]) -> str:
    """The nft script of a table that cuts `cut` off from the gRPC traffic of `others`, both ways.

    Three rules mark a connection: the cut node calling another's gRPC port,
    the cut node answering on its own gRPC port (only nodes call it), another
    node calling the cut node's gRPC port. An answer another node sends to the
    cut node cannot be told by its ports, but the cut node's next packet on
    that connection (its acknowledgement) marks it: at most what was already
    in flight gets through, as on a real network.
    """
    ports = ", ".join(str(e.grpc_port) for e in (cut, *others))
    other_ports = ", ".join(str(e.grpc_port) for e in others)
    other_uids = ", ".join(str(e.uid) for e in others)
    local = "ip daddr %s" % HOST
    return "\n".join([
        "table ip %s {" % table,
        "  chain output {",
        "    type filter hook output priority 0; policy accept;",
        "    %s meta skuid %d tcp dport { %s } ct mark set %d" % (local, cut.uid, other_ports, mark),
        "    %s meta skuid %d tcp sport %d ct mark set %d" % (local, cut.uid, cut.grpc_port, mark),
        "    %s meta skuid { %s } tcp dport %d ct mark set %d" % (local, other_uids, cut.grpc_port, mark),
        "    %s ct mark %d tcp dport { %s } counter drop" % (local, mark, ports),
        "    %s ct mark %d tcp sport { %s } counter drop" % (local, mark, ports),
        "  }",
        "}",
        "",
    ])


class Firewall:
    """One partition at a time on 127.0.0.1, in an nftables table of this process's own."""

    def __init__(self) -> None:
        self.table = "%s%d" % (TABLE_PREFIX, os.getpid())
        self.cut_off = None

    def isolate(self, cut: Endpoint, others: Sequence[Endpoint]) -> None:
        """Cut `cut` off from the gRPC traffic of `others` (one cut at a time: heal first)."""
        assert self.cut_off is None, "a partition is already in place: heal it first"
        nft(partition_ruleset(self.table, next(_marks), cut, others), "-f", "-")
        self.cut_off = cut

    def heal(self) -> int:
        """Remove the partition (delete the table); return how many packets it dropped (0: none in place)."""
        if self.cut_off is None:
            return 0
        listing = nft("", "list", "table", "ip", self.table)
        nft("", "delete", "table", "ip", self.table)
        self.cut_off = None
        return sum(int(n) for n in re.findall(r"counter packets (\d+) bytes", listing))


class UidReservation:
    """Uids no other process uses, reserved by holding a lock file each until `release`."""

    def __init__(self, count: int) -> None:
        self._held: list[tuple[int, int]] = []        # (uid, fd of its lock file)
        LOCK_DIR.mkdir(mode=0o700, exist_ok=True)
        for uid in UID_RANGE:
            if len(self._held) == count:
                break
            if _listed(uid):
                continue
            fd = os.open(LOCK_DIR / ("%d.lock" % uid), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._held.append((uid, fd))
        if len(self._held) < count:
            self.release()
            raise AssertionError("no %d free uids in %s" % (count, UID_RANGE))
        self.uids = [uid for uid, _ in self._held]

    def release(self) -> None:
        for _, fd in self._held:
            os.close(fd)
        self._held = []


def _listed(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


class UidNode(ServerProcess):
    """A geomys process that runs under `uid` (and its gid), with no supplementary groups.

    Only the uid matters, as the firewall's key. The process keeps
    CAP_DAC_READ_SEARCH so that it can read the interpreter, the checkout and
    its config wherever they are (for example under /root, mode 0700); its
    working directory is its own, for any file it writes.
    """

    def __init__(self, workdir: Path, uid: int, **options) -> None:
        super().__init__(workdir, **options)
        self.uid = uid
        os.chown(self.workdir, uid, uid)

    def argv(self) -> list[str]:
        return ["setpriv", "--reuid=%d" % self.uid, "--regid=%d" % self.uid, "--clear-groups",
                "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", *super().argv()]

    def endpoint(self) -> Endpoint:
        """The node as the firewall sees it; checks that the process really runs under its uid."""
        running_as = os.stat("/proc/%d" % self.proc.pid).st_uid
        assert running_as == self.uid, "node on port %d runs as uid %d, not %d" % (self.port, running_as, self.uid)
        return Endpoint(self.uid, int(self.options.get("grpc_port") or self.port + 1000))
