#!/bin/bash
# nested-xen.sh - boot Debian's Xen (4.17, or 4.20 with -X) + a Linux PV dom0 inside QEMU
# (software CPU emulation), run one command in dom0 once xenstored (C or OCaml)
# and xenconsoled are up, and return its output and exit code. Non-interactive;
# tests/nested/run drives it. Started from the team's reference script
# (shared/nested-xen/run-nested-xen.sh); the project's own copy.
#
# Usage:
#   nested-xen.sh [options] [--] [command ...]
#
#   With no command, selftest.sh (beside this script) runs in dom0: xl info,
#   xenstore-ls, PV guest create, pause/unpause, save/restore, migrate, shutdown,
#   destroy, PVH guest.
#
# Options:
#   -w DIR        work/cache dir (default: $NX_WORK or tests/nested/.work)
#   -o DIR        output dir for this run (default: $WORK/run-<timestamp>)
#   -f SRC[:DST]  copy host file SRC into dom0 at DST (default /usr/local/bin/<name>);
#                 repeatable; SRC may be a directory
#   -s XENSTORED  xenstore daemon in dom0: cxenstored (default) | oxenstored
#   -X VERSION    Xen release: 4.17 (default: Debian 12's Xen, 6.1 kernel, from the host's apt
#                 sources) | 4.20 (Debian 13's Xen, 6.12 kernel, libc and busybox, fetched
#                 through a private apt sources entry; cached in WORK/xen-4.20)
#   -t SECONDS    hard timeout for the whole QEMU run (default 1200); a boot that has
#                 not reached dom0 userspace after NX_DOM0_TIMEOUT s (480) is killed (rc 125)
#   -a ACCEL      tcg (default) | kvm  (kvm does NOT work on PVM-based hosts)
#   -m MB         RAM given to QEMU (default 3072)
#   -d MB         dom0 memory (default 1024)
#   -c N          virtual CPUs (default 2)
#   -x ARGS       extra Xen command line arguments
#   -k ARGS       extra dom0 kernel command line arguments
#   -p            only prepare (install host packages, download + build images), do not boot
#   -q            quiet: do not echo the serial console to stderr
#
# Results (in the output dir):
#   console.log   full serial console (Xen + dom0 hvc0)
#   output.txt    stdout+stderr of the command (raw, via a 2nd UART = dom0 /dev/ttyS1)
#   rc            exit code of the command
#   timings.txt   phase timings (boot to dom0 userspace, to toolstack ready, total)
# The command's output is also copied to stdout; the script exits with the command's
# exit code, 124 on timeout, 125 on harness/boot failure (with "NESTED-XEN-BOOT-FAILED"
# on stderr).
#
#   A single command argument is run as a shell snippet ('xl info; xl list');
#   several arguments are exec'ed as argv.
#   In dom0: PATH has /usr/lib/xen-VERSION/bin (xl, xenstored, ...); the chosen xenstored
#   (socket /run/xenstored/socket) and xenconsoled (--log=guest ->
#   /var/log/xen/console/guest-NAME.log) are running; /proc/xen is mounted;
#   /guest/vmlinux (uncompressed ELF), /guest/vmlinuz + /guest/initrd.gz are a ready
#   PV/PVH domU (kernel arg nxmode=poweroff|loop|reboot|crash|devices|hotplug, see
#   build_guest_initrd); /guest/grub-i386-xen_pvh.bin (PVH) and /guest/grub-x86_64-xen.bin
#   (PV) are GRUB for Xen, /guest/disk.ext4 a disk it boots that guest from; /tmp is a
#   tmpfs; NX_XENSTORED names the running xenstore daemon; loop, bridge, blkback and
#   netback are loaded (busybox has losetup, brctl and ip).
#
# Env: NX_CPU (QEMU -cpu, default max,-smap for tcg), NX_TCG (QEMU -accel for tcg, default
#      tcg,thread=multi), NX_KEEP=1 (keep per-run cpio),
#      NX_KERNEL_PKG (pin the kernel package, e.g. linux-image-6.1.0-57-amd64),
#      NX_NO_INSTALL=1 (never apt-get install), NX_XEN (default of -X),
#      NX_QEMU_BIN (the QEMU binary, default qemu-system-x86_64 from PATH; e.g. QEMU 10
#      extracted from bookworm-backports), NX_QEMU_DATA (colon-separated -L dirs for
#      that binary's firmware: its own share/qemu, then /usr/share/seabios).
#
# Host: Debian 12 as root. Missing qemu-system-x86, cpio, xz-utils, zstd, gzip, e2fsprogs are installed
# with apt-get; the Xen/kernel/busybox .debs are fetched with apt-get download and cached.
# For 4.20 the dom0 image carries Debian 13's libc and ld.so (its tools need them), never
# the host's; the host's apt sources are left untouched.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
WORK=${NX_WORK:-$HERE/.work}
OUT=""
FILES=()
TIMEOUT=1200
# dom0 userspace is reached in 80-130 s under TCG (3x that on a loaded machine)
DOM0_TIMEOUT=${NX_DOM0_TIMEOUT:-480}
ACCEL=${NX_ACCEL:-tcg}
QMEM=3072
DOM0MEM=1024
NCPU=2
FLAVOR=busybox
XENSTORED=${NX_XENSTORED:-cxenstored}
XENVER=${NX_XEN:-4.17}
XEN_EXTRA=""
DOM0_EXTRA=""
PREPARE_ONLY=0
QUIET=0
while getopts "w:o:f:s:X:t:a:m:d:c:x:k:pqh" opt; do
  case $opt in
    w) WORK=$OPTARG ;; o) OUT=$OPTARG ;; f) FILES+=("$OPTARG") ;; s) XENSTORED=$OPTARG ;; X) XENVER=$OPTARG ;;
    t) TIMEOUT=$OPTARG ;; a) ACCEL=$OPTARG ;; m) QMEM=$OPTARG ;; d) DOM0MEM=$OPTARG ;;
    c) NCPU=$OPTARG ;; x) XEN_EXTRA=$OPTARG ;; k) DOM0_EXTRA=$OPTARG ;;
    p) PREPARE_ONLY=1 ;; q) QUIET=1 ;;
    h) sed -n '2,60p' "$0"; exit 0 ;;
    *) exit 125 ;;
  esac
done
shift $((OPTIND - 1))
[ "${1:-}" = "--" ] && shift
case $XENSTORED in cxenstored|oxenstored) ;; *) echo "nested-xen: -s: unknown xenstored '$XENSTORED' (cxenstored|oxenstored)" >&2; exit 125 ;; esac

T_START=$(date +%s.%N)
now() { date +%s.%N; }
elapsed() { awk -v a="$(now)" -v b="$1" 'BEGIN{printf "%.1f", a-b}'; }
log() { echo "[nested-xen $(printf '%6s' "$(elapsed "$T_START")")s] $*" >&2; }
die() { log "ERROR: $*"; echo "NESTED-XEN-BOOT-FAILED: $*" >&2; exit 125; }

mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)

# Per Xen release: the Debian suite it comes from and where its files are cached.
# 4.17 is the host's own suite (Debian 12) and keeps the cache's top level; other
# releases get a subdirectory and a private apt sources entry (APT_OPTS), so the
# host's apt configuration and the 4.17 files stay untouched.
APT_OPTS=()
PKGS_EXTRA=""
case $XENVER in
  4.17) CACHE=$WORK ;;
  4.20)
    CACHE=$WORK/xen-$XENVER
    APT_DIR=$CACHE/apt
    APT_OPTS=(-o "Dir::Etc::sourcelist=$APT_DIR/trixie.sources" -o Dir::Etc::sourceparts=-
              -o "Dir::State::Lists=$APT_DIR/lists" -o "Dir::Cache=$APT_DIR/cache"
              -o Dir::State::status=/dev/null)
    # libxenmisc4.20 needs libext2fs; xentop ncurses (4.17 takes those from the host)
    PKGS_EXTRA="libext2fs2t64 libcom-err2 libncurses6 libtinfo6" ;;
  *) echo "nested-xen: -X: unknown Xen release '$XENVER' (4.17|4.20)" >&2; exit 125 ;;
esac
DEBS=$CACHE/debs
EXT=$CACHE/extract
IMG=$CACHE/img

PKGS_XEN="xen-hypervisor-$XENVER-amd64 xen-utils-$XENVER xen-utils-common xenstore-utils
  libxencall1 libxenevtchn1 libxenforeignmemory1 libxengnttab1 libxenmisc$XENVER libxenstore4
  libxentoollog1 libxenhypfs1 libxendevicemodel1 libxentoolcore1 libyajl2"
PKGS_BASE="busybox-static libc6 libgcc-s1 libuuid1 zlib1g liblzma5 libzstd1 $PKGS_EXTRA"
# dom0's kernel modules, insmod'ed in this order (busybox has no modprobe and the packages
# no modules.dep: dependencies first). All are modules in Debian's 6.1 and 6.12 kernels
# (/boot/config-*: CONFIG_BLK_DEV_LOOP=m, CONFIG_BRIDGE=m, CONFIG_XEN_*_BACKEND=m); their
# "depends=": xenfs on xen-privcmd, bridge on stp and llc, stp on llc, the rest none.
# loop gives /dev/loop0-7 and /dev/loop-control (CONFIG_BLK_DEV_LOOP_MIN_COUNT=8).
XEN_MODULES="xen-privcmd xenfs xen-evtchn xen-gntdev xen-gntalloc xen-blkback xen-netback loop llc stp bridge"

# ---------------------------------------------------------------- preparation
# host tools: install what is missing (Debian package names)
ensure_host_tools() {
  local missing=() c p
  for c in qemu-system-x86_64:qemu-system-x86 cpio:cpio xz:xz-utils zstd:zstd gzip:gzip dpkg-deb:dpkg apt-get:apt mkfs.ext4:e2fsprogs; do
    command -v "${c%%:*}" >/dev/null || missing+=("${c#*:}")
  done
  [ ${#missing[@]} = 0 ] && return 0
  [ -z "${NX_NO_INSTALL:-}" ] && [ "$(id -u)" = 0 ] || die "missing host packages: ${missing[*]} (install them, or run as root)"
  log "installing host packages: ${missing[*]}"
  apt-get update -q >/dev/null 2>&1 || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >"$WORK/apt-install.log" 2>&1 \
    || { tail -20 "$WORK/apt-install.log" >&2; die "apt-get install ${missing[*]} failed"; }
}

# the private apt sources entry and package lists of a release other than the host's
prepare_apt() {
  [ ${#APT_OPTS[@]} -gt 0 ] || return 0
  [ -f "$APT_DIR/.done" ] && return 0
  mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial"
  printf '%s\n' 'Types: deb' 'URIs: http://deb.debian.org/debian' 'Suites: trixie' 'Components: main' \
    'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' >"$APT_DIR/trixie.sources"
  log "apt-get update of the private trixie sources ($APT_DIR)"
  apt-get "${APT_OPTS[@]}" update -q >"$APT_DIR/update.log" 2>&1 \
    || { tail -20 "$APT_DIR/update.log" >&2; die "apt-get update (trixie, private) failed"; }
  touch "$APT_DIR/.done"
}

prepare_download() {
  [ -f "$DEBS/.done" ] && return 0
  local t0; t0=$(now)
  mkdir -p "$DEBS"
  prepare_apt
  # linux-image-amd64 is a metapackage; follow it to the real linux-image-6.*
  local kpkg
  kpkg=${NX_KERNEL_PKG:-$(apt-cache "${APT_OPTS[@]}" depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')}
  if [ -z "$kpkg" ] && [ "$(id -u)" = 0 ] && [ ${#APT_OPTS[@]} = 0 ]; then
    log "apt lists look empty, running apt-get update"; apt-get update -q >/dev/null
    kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  fi
  [ -n "$kpkg" ] || die "cannot resolve linux-image-amd64 (run apt-get update?)"
  log "downloading: $kpkg + xen $XENVER packages + busybox/libc"
  # shellcheck disable=SC2086
  (cd "$DEBS" && apt-get "${APT_OPTS[@]}" download -q $PKGS_XEN $PKGS_BASE "$kpkg" >/dev/null 2>"$DEBS/apt.err") \
    || { cat "$DEBS/apt.err" >&2; die "apt-get download failed"; }
  echo "download $(elapsed "$t0")s $(du -sh "$DEBS" | cut -f1)" >>"$WORK/prepare-timings.txt"
  log "download done in $(elapsed "$t0")s ($(du -sh "$DEBS" | cut -f1))"
  touch "$DEBS/.done"
}

prepare_extract() {
  [ -f "$EXT/.done" ] && return 0
  local t0; t0=$(now)
  rm -rf "$EXT"; mkdir -p "$EXT"
  for d in "$DEBS"/*.deb; do dpkg-deb -x "$d" "$EXT"; done
  echo "extract $(elapsed "$t0")s" >>"$WORK/prepare-timings.txt"
  log "extracted debs in $(elapsed "$t0")s"
  touch "$EXT/.done"
}

# Debian 13's packages install under /usr only (merged /usr); Debian 12's still use /lib, /bin
ext_path() { # $1: path below / as Debian 12 has it; prints the extracted file's path
  if [ -e "$EXT/$1" ]; then echo "$EXT/$1"; else echo "$EXT/usr/$1"; fi
}
moddir() { ext_path lib/modules; }
kver() { basename "$(ls -d "$(moddir)"/*/ | head -1)"; }

# The cached images are named by IMAGE_VERSION (guest-initrd-vN.gz, dom0-base-vN.cpio.gz):
# bump it when the guest's /init, its modules or the dom0 image's contents change.
# Checkouts of different versions can share one cache (NX_WORK) without rebuilding
# each other's images under a boot that is about to use them.
IMAGE_VERSION=5
GUEST_INITRD=$IMG/guest-initrd-v$IMAGE_VERSION.gz
DOM0_BASE=$IMG/dom0-base-v$IMAGE_VERSION.cpio.gz
# the guest's frontend drivers (modules in Debian's 6.1 and 6.12 kernels, no dependencies)
GUEST_MODULES="xen-blkfront xen-netfront"

# copy_module NAME DST: the kernel module NAME from the extracted kernel package to the file
# DST, stored uncompressed (6.12's are .ko.xz, which busybox insmod cannot read)
copy_module() {
  local f; f=$(find "$(moddir)/$(kver)" -name "$1.ko*" | head -1)
  [ -n "$f" ] || return 1
  mkdir -p "$(dirname "$2")"
  case $f in
    *.ko.xz) xz -dc "$f" >"$2" ;;
    *) cp "$f" "$2" ;;
  esac
}

# tiny busybox initramfs for the nested guest (domU). Behaviour selected on the kernel
# command line (nxmode=):
#   poweroff  print GUEST-BOOTED, power off (the default)
#   loop      GUEST-BOOTED, then a heartbeat (GUEST-ALIVE <n>) every second, forever
#   reboot    GUEST-BOOTED, one heartbeat, reboot: every boot reboots again
#   crash     GUEST-BOOTED, one heartbeat, a kernel panic through sysrq
#   devices   with nxpattern=WORD nxip=ADDR/LEN nxping=ADDR [nxddmb=N]: waits (30 s) for
#             /dev/xvda and /dev/xvdb; writes WORD to the start of xvda and reads it back
#             (GUEST-DISK-WROTE WORD | GUEST-DISK-WRITE-FAILED ...), prints the first word
#             on xvdb (GUEST-DISK-RO WORD), configures eth0 with ADDR and pings nxping
#             (GUEST-PING ok|fail), writes and reads N MiB (default 16) at 1 MiB into
#             xvda (GUEST-DD write_kbps=.. read_kbps=..), prints GUEST-DEVICES-DONE, then
#             heartbeats as loop
#   hotplug   heartbeats as loop, and GUEST-DEVICE-ADDED|REMOVED <name> as block devices
#             (/sys/block/xvd*) and NICs (/sys/class/net/eth*) come and go (1 s poll)
# In every mode the guest loads blkfront and netfront (after GUEST-BOOTED), so any disk or
# NIC given to it connects.
build_guest_initrd() {
  [ -f "$GUEST_INITRD" ] && return 0
  local d=$IMG/guest-root-v$IMAGE_VERSION.$$ m
  rm -rf "$d"; mkdir -p "$d"/{bin,sbin,proc,sys,dev,tmp,lib/modules}
  cp "$(ext_path bin/busybox)" "$d/bin/busybox"
  for a in sh mount echo cat sleep poweroff reboot grep uname cut insmod dd sync ip ping hexdump od \
           ls head tr wc printf seq test expr sed awk usleep; do ln -sf busybox "$d/bin/$a"; done
  for m in $GUEST_MODULES; do
    copy_module "$m" "$d/lib/modules/$m.ko" || die "guest module $m not in the kernel package"
  done
  # the kernel runs /sbin/poweroff resp. /sbin/reboot on "xl shutdown"/"xl reboot"
  # (xenbus control/shutdown watch -> orderly_poweroff); our init is not busybox
  # init, so make these force the action directly.
  printf '#!/bin/sh\necho GUEST-SHUTDOWN-REQUESTED\nexec /bin/busybox poweroff -f\n' >"$d/sbin/poweroff"
  printf '#!/bin/sh\necho GUEST-REBOOT-REQUESTED\nexec /bin/busybox reboot -f\n' >"$d/sbin/reboot"
  chmod +x "$d/sbin/poweroff" "$d/sbin/reboot"
  cat >"$d/init" <<'EOF'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mode=poweroff pattern="" ip="" pingto="" ddmb=16
for w in $(cat /proc/cmdline); do
  case $w in
    nxmode=*) mode=${w#nxmode=} ;;
    nxpattern=*) pattern=${w#nxpattern=} ;;
    nxip=*) ip=${w#nxip=} ;;
    nxping=*) pingto=${w#nxping=} ;;
    nxddmb=*) ddmb=${w#nxddmb=} ;;
  esac
done
read -r _ memkib _ </proc/meminfo
echo "GUEST-BOOTED kernel=$(uname -r) uptime=$(cut -d' ' -f1 /proc/uptime) mode=$mode cpus=$(grep -c ^processor /proc/cpuinfo) mem_kib=$memkib"
for m in /lib/modules/*.ko; do insmod "$m" || echo "GUEST-WARN insmod $m failed"; done
# centiseconds since boot
cs() { read -r u _ </proc/uptime; echo "${u%.*}${u#*.}" | sed 's/^0*//;s/^$/0/'; }
# waitfor SECONDS PATH...: until every PATH exists
waitfor() {
  n=$(($1 * 10)); shift
  for p in "$@"; do
    while [ ! -e "$p" ]; do [ $n -le 0 ] && return 1; n=$((n - 1)); usleep 100000; done
  done
}
alive() { i=0; while :; do i=$((i+1)); echo "GUEST-ALIVE $i"; sleep 1; done; }
devices() {
  if waitfor 30 /dev/xvda /dev/xvdb; then
    echo "GUEST-DISKS $(ls /sys/block | tr '\n' ' ')"
  else
    echo "GUEST-DISKS-MISSING have: $(ls /sys/block | tr '\n' ' ')"
  fi
  if [ -b /dev/xvda ]; then
    echo "$pattern" | dd of=/dev/xvda conv=fsync 2>/dev/null
    echo 3 >/proc/sys/vm/drop_caches
    got=$(head -c 64 /dev/xvda | head -n 1)
    if [ -n "$pattern" ] && [ "$got" = "$pattern" ]; then echo "GUEST-DISK-WROTE $pattern"
    else echo "GUEST-DISK-WRITE-FAILED wanted '$pattern' read back '$got'"; fi
  fi
  [ -b /dev/xvdb ] && echo "GUEST-DISK-RO $(head -c 64 /dev/xvdb | tr -c 'A-Za-z0-9_.-' ' ' | cut -d' ' -f1)"
  if [ -n "$ip" ]; then
    waitfor 30 /sys/class/net/eth0 || echo "GUEST-NIC-MISSING have: $(ls /sys/class/net | tr '\n' ' ')"
    ip link set lo up
    ip addr add "$ip" dev eth0 && ip link set eth0 up
    if ping -c 3 -w 15 "$pingto" >/tmp/ping.out 2>&1; then echo "GUEST-PING ok"
    else echo "GUEST-PING fail: $(tail -n 2 /tmp/ping.out | tr '\n' ' ')"; fi
  fi
  if [ -b /dev/xvda ]; then
    t0=$(cs); dd if=/dev/zero of=/dev/xvda bs=1M seek=1 count="$ddmb" conv=fsync 2>/dev/null; t1=$(cs)
    echo 3 >/proc/sys/vm/drop_caches
    dd if=/dev/xvda of=/dev/null bs=1M skip=1 count="$ddmb" 2>/dev/null; t2=$(cs)
    echo "GUEST-DD mb=$ddmb write_kbps=$((ddmb * 1024 * 100 / (t1 - t0 + 1))) read_kbps=$((ddmb * 1024 * 100 / (t2 - t1 + 1)))"
  fi
  echo GUEST-DEVICES-DONE
}
hotplug() {
  old="" i=0
  while :; do
    now=$(cd /sys/block && ls -d xvd* 2>/dev/null; cd /sys/class/net && ls -d eth* 2>/dev/null)
    for n in $now; do case " $(echo $old) " in *" $n "*) ;; *) echo "GUEST-DEVICE-ADDED $n" ;; esac; done
    for n in $old; do case " $(echo $now) " in *" $n "*) ;; *) echo "GUEST-DEVICE-REMOVED $n" ;; esac; done
    old=$now; i=$((i+1)); echo "GUEST-ALIVE $i"; sleep 1
  done
}
case $mode in
loop) alive ;;
devices) devices; alive ;;
hotplug) hotplug ;;
reboot) echo "GUEST-ALIVE 1"; sleep 1; echo GUEST-REBOOTING; reboot -f ;;
crash) echo "GUEST-ALIVE 1"; sleep 1; echo GUEST-CRASHING; echo c >/proc/sysrq-trigger ;;
esac
poweroff -f
EOF
  chmod +x "$d/init"
  (cd "$d" && find . | cpio -o -H newc -R 0:0 --quiet | gzip -9) >"$GUEST_INITRD.tmp.$$"
  mv "$GUEST_INITRD.tmp.$$" "$GUEST_INITRD"
  rm -rf "$d"
}

# GRUB for Xen (grub-xen-host): grub-i386-xen_pvh.bin (PVH, a 32-bit ELF) and
# grub-x86_64-xen.bin (PV), the guest kernels that boot a distribution image from the
# guest's own disk. Fetched and cached apart from the other packages, and copied into
# each run's overlay at /guest/ (so the cached dom0 image stays as it is). A failed
# download only warns: the tests that boot them then fail naming the missing file.
GRUB_DIR=$CACHE/grub-xen
prepare_guest_grub() {
  [ -f "$GRUB_DIR/.done" ] && return 0
  rm -rf "$GRUB_DIR"; mkdir -p "$GRUB_DIR/deb"
  if (cd "$GRUB_DIR/deb" && apt-get "${APT_OPTS[@]}" download -q grub-xen-host >/dev/null 2>"$GRUB_DIR/apt.err") &&
     dpkg-deb -x "$(ls "$GRUB_DIR"/deb/grub-xen-host_*.deb | head -1)" "$GRUB_DIR/extract"; then
    touch "$GRUB_DIR/.done"
  else
    log "NX-WARN grub-xen-host not fetched: $(tail -1 "$GRUB_DIR/apt.err" 2>/dev/null)"
  fi
}
add_guest_grub() { # $1: the root of a dom0 overlay
  local f src
  for f in grub-i386-xen_pvh.bin grub-x86_64-xen.bin; do
    src=$GRUB_DIR/extract/usr/lib/grub-xen/$f
    [ -f "$src" ] && { mkdir -p "$1/guest"; cp "$src" "$1/guest/$f"; }
  done
  [ -f "$GUEST_DISK" ] && { mkdir -p "$1/guest"; cp "$GUEST_DISK" "$1/guest/disk.ext4"; }
  # the loop driver, for a test to make the disk a block device (dom0 loads it at boot
  # too, since the devices tests; a test that insmods this copy takes EEXIST as done)
  f=$(find "$(moddir)/$(kver)" -name 'loop.ko*' | head -1)
  mkdir -p "$1/guest/modules"
  case $f in
    '') ;;
    *.ko.xz) xz -dc "$f" >"$1/guest/modules/loop.ko" ;;
    *) cp "$f" "$1/guest/modules/loop.ko" ;;
  esac
  return 0
}

# The guest's own disk, for GRUB to boot from: a whole-disk ext4 file system (no
# partition table) holding the guest kernel twice, /boot/vmlinuz (the bzImage, which
# PVH GRUB boots by the Linux boot protocol) and /boot/vmlinux.xz (the ELF, which PV
# GRUB loads: its Xen loader unpacks xz and gzip but not the zstd bzImage of Debian 13),
# /boot/initrd.gz (the guest initramfs) and the /boot/grub/grub.cfg that GRUB for Xen's
# built-in configuration looks for. /guest/disk.ext4 in dom0, with the loop driver
# beside it (/guest/modules/loop.ko: blkback serves block devices, not files); rebuilt
# when the initramfs or the kernel is newer, or GUEST_DISK_VERSION changes.
GUEST_DISK=$IMG/guest-disk-v$IMAGE_VERSION.ext4   # carries the guest initramfs of this IMAGE_VERSION
GUEST_DISK_VERSION=2
build_guest_disk() {
  local d=$IMG/guest-disk kernel initrd=$GUEST_INITRD
  kernel=$EXT/boot/vmlinuz-$(kver)
  [ -f "$IMG/vmlinux" ] || { log "NX-WARN no $IMG/vmlinux: no guest disk"; return 0; }
  [ -f "$GUEST_DISK" ] && [ "$(cat "$GUEST_DISK.version" 2>/dev/null)" = $GUEST_DISK_VERSION ] &&
    [ "$GUEST_DISK" -nt "$initrd" ] && [ "$GUEST_DISK" -nt "$kernel" ] && return 0
  rm -rf "$d" "$GUEST_DISK"; mkdir -p "$d/boot/grub"
  cp "$kernel" "$d/boot/vmlinuz"
  xz -T2 -3 -c "$IMG/vmlinux" >"$d/boot/vmlinux.xz"
  cp "$initrd" "$d/boot/initrd.gz"
  printf '%s\n' 'set timeout=0' 'menuentry "nested-xen guest" {' \
    '  if [ "$grub_platform" = xen ]; then linux /boot/vmlinux.xz console=hvc0 nxmode=poweroff' \
    '  else linux /boot/vmlinuz console=hvc0 nxmode=poweroff; fi' '  initrd /boot/initrd.gz' '}' >"$d/boot/grub/grub.cfg"
  mkfs.ext4 -q -F -L nx-guest -d "$d" "$GUEST_DISK.tmp" 64M >/dev/null || { rm -f "$GUEST_DISK.tmp"; die "mkfs.ext4 of the guest disk failed"; }
  mv "$GUEST_DISK.tmp" "$GUEST_DISK"
  echo $GUEST_DISK_VERSION >"$GUEST_DISK.version"
  rm -rf "$d"
}

# dom0 /init (shared by both flavors); @XENVER@ is the Xen release
write_dom0_init() {
  sed "s/@XENVER@/$XENVER/g" >"$1" <<'EOF'
#!/bin/sh
# dom0 init for nested-xen test runs
export PATH=/usr/local/sbin:/usr/local/bin:/usr/lib/xen-@XENVER@/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=dumb
up() { cut -d' ' -f1 /proc/uptime; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm /run /tmp /var/lib/xen /var/log/xen/console /root
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
# rootfs (initramfs) is a tmpfs capped at 50% of RAM and already holds the image;
# give /tmp (save images etc.) its own, larger tmpfs
mount -t tmpfs -o size=80% tmpfs /tmp
[ -L /var/run ] || { rm -rf /var/run; ln -s /run /var/run; }
[ -L /var/lock ] || { rm -rf /var/lock; ln -s /run/lock /var/lock; }
mkdir -p /run/xen /run/xenstored /run/lock
echo "NX-STAGE dom0-userspace uptime=$(up)"
KV=$(uname -r)
for m in $(cat /etc/nx-modules); do
  f=$(find /lib/modules/$KV -name "$m.ko*" | head -1)
  if [ -z "$f" ]; then echo "NX-WARN module $m missing"; continue; fi
  insmod "$f" || echo "NX-WARN insmod $m failed"
done
mount -t xenfs xenfs /proc/xen || echo "NX-WARN xenfs mount failed"
ls /dev/xen >/dev/null 2>&1 || echo "NX-WARN /dev/xen missing"
NX_XENSTORED=$(cat /etc/nx-xenstored 2>/dev/null || echo cxenstored)
export NX_XENSTORED
mkdir -p /var/lib/xenstored /var/log/xen
case $NX_XENSTORED in
  oxenstored) oxenstored --pid-file /run/xen/xenstored.pid ;;
  *) xenstored --pid-file /run/xen/xenstored.pid ;;
esac || echo "NX-WARN $NX_XENSTORED failed to start"
i=0; while ! xenstore-ls / >/dev/null 2>&1; do
  i=$((i+1)); [ $i -gt 200 ] && { echo "NX-WARN xenstored not answering"; break; }; usleep 100000; done
echo "NX-XENSTORED $NX_XENSTORED pid=$(cat /run/xen/xenstored.pid 2>/dev/null)"
xen-init-dom0 >/dev/null 2>&1 || echo "NX-WARN xen-init-dom0 failed"
xenconsoled --pid-file=/run/xen/xenconsoled.pid --log=guest --log-dir=/var/log/xen/console
echo "NX-STAGE toolstack-ready uptime=$(up)"
# result channel: second UART (QEMU -serial #2) if present, else hvc0
RES=/dev/console
if grep -q '^1: uart:16550' /proc/tty/driver/serial 2>/dev/null; then
  stty -F /dev/ttyS1 raw -echo 115200 2>/dev/null && RES=/dev/ttyS1
fi
echo "NX-RESULT-CHANNEL $RES"
cd /root
if [ -x /nx/test.sh ]; then
  if [ "$RES" = /dev/console ]; then echo "NX-OUTPUT-BEGIN"; fi
  /nx/test.sh >"$RES" 2>&1 </dev/null
  rc=$?
  if [ "$RES" = /dev/console ]; then echo; echo "NX-OUTPUT-END"; fi
else
  echo "NX-WARN no /nx/test.sh"; rc=125
fi
sync
echo "NX-RC=$rc uptime=$(up)"
sleep 1
/bin/busybox reboot -f
EOF
  chmod +x "$1"
}

# QEMU's Xen device model (Debian 12's qemu-system-xen: /usr/libexec/xen-qemu-system-i386, the
# path libxl 4.17 spawns) for the qdisk backend (qcow2 disks), with qemu-img and qemu-io
# (qemu-utils) and the one keymap QEMU reads even with -vnc none (qemu-system-data's en-us).
# Its libraries (spice, glib, gstreamer, ...: 23 MB) come from the host, a Debian 12 like the
# 4.17 dom0, unless the extracted packages have them. Kept as its own cached cpio (15 MB gz,
# 42 MB unpacked), appended to the 4.17 boots only (it links libxenctrl 4.17). A failed
# download only warns: the qdisk tests then skip naming the missing file.
QEMU_XEN_DIR=$CACHE/qemu-xen
QEMU_XEN_CPIO=$QEMU_XEN_DIR/qemu-xen.cpio.gz
prepare_qemu_xen() {
  [ "$XENVER" = 4.17 ] || return 0
  [ -f "$QEMU_XEN_DIR/.done" ] && return 0
  local t0; t0=$(now)
  rm -rf "$QEMU_XEN_DIR"; mkdir -p "$QEMU_XEN_DIR/deb" "$QEMU_XEN_DIR/extract"
  if ! (cd "$QEMU_XEN_DIR/deb" && apt-get "${APT_OPTS[@]}" download -q qemu-system-xen qemu-utils qemu-system-data \
        >/dev/null 2>"$QEMU_XEN_DIR/apt.err"); then
    log "NX-WARN qemu-system-xen not fetched: $(tail -1 "$QEMU_XEN_DIR/apt.err" 2>/dev/null)"; return 0
  fi
  local d x=$QEMU_XEN_DIR/extract r=$QEMU_XEN_DIR/root
  for d in "$QEMU_XEN_DIR"/deb/*.deb; do dpkg-deb -x "$d" "$x"; done
  rm -rf "$r"; mkdir -p "$r/usr/libexec" "$r/usr/bin" "$r/usr/share/qemu/keymaps" "$r/usr/lib/x86_64-linux-gnu"
  cp "$x/usr/libexec/xen-qemu-system-i386" "$r/usr/libexec/"
  cp "$x/usr/bin/qemu-img" "$x/usr/bin/qemu-io" "$r/usr/bin/"
  cp "$x/usr/share/qemu/keymaps/en-us" "$r/usr/share/qemu/keymaps/"
  local lib base libpath=$EXT/usr/lib/x86_64-linux-gnu:$EXT/lib/x86_64-linux-gnu
  for d in "$r/usr/libexec/xen-qemu-system-i386" "$r/usr/bin/qemu-img" "$r/usr/bin/qemu-io"; do
    LD_LIBRARY_PATH=$libpath ldd "$d" | awk '$2 == "=>" {print ($3 == "not" ? $1 : $3)}'
  done | sort -u | while read -r lib; do
    base=$(basename "$lib")
    # libxen* and libc's own resolve to the extracted packages (the dom0's copies), the rest to the host
    case $lib in
      /*) [ -e "$r/usr/lib/x86_64-linux-gnu/$base" ] || cp -L "$lib" "$r/usr/lib/x86_64-linux-gnu/$base" ;;
      *) log "NX-WARN qemu-system-xen needs $base, found neither in the packages nor on the host" ;;
    esac
  done
  (cd "$r" && find . | cpio -o -H newc -R 0:0 --quiet | gzip -1) >"$QEMU_XEN_CPIO"
  rm -rf "$r" "$x"
  echo "qemu-xen $(elapsed "$t0")s $(du -h "$QEMU_XEN_CPIO" | cut -f1)" >>"$WORK/prepare-timings.txt"
  log "qemu-system-xen image in $(elapsed "$t0")s ($(du -h "$QEMU_XEN_CPIO" | cut -f1))"
  touch "$QEMU_XEN_DIR/.done"
}

# copy_libs_for ROOT BINARY...: copy the shared libraries the binaries (inside ROOT)
# need from the extracted packages. The packages' own ld.so lists them, so a
# release whose libc is newer than the host's resolves them as its dom0 will.
copy_libs_for() {
  local root=$1; shift
  local b lib ldso libpath=$EXT/usr/lib/x86_64-linux-gnu:$EXT/lib/x86_64-linux-gnu
  ldso=$(ext_path lib/x86_64-linux-gnu/ld-linux-x86-64.so.2)
  [ -x "$ldso" ] || die "no ld.so in the extracted packages ($ldso)"
  for b in "$@"; do
    "$ldso" --library-path "$libpath" --list "$b" 2>/dev/null | awk '/=>/{print $3} /^\t\/lib64/{print $1}' || true
  done | sort -u | while read -r lib; do
    [ -n "$lib" ] || continue
    local base; base=$(basename "$lib")
    local src=""
    for c in "$EXT/lib/x86_64-linux-gnu/$base" "$EXT/usr/lib/x86_64-linux-gnu/$base" "$lib"; do
      [ -e "$c" ] && { src=$c; break; }
    done
    case $src in "$EXT"/*) ;; *) log "NX-WARN $base is not in the extracted packages; taking the host's ($src)" ;; esac
    case $base in ld-linux-x86-64.so.2) mkdir -p "$root/lib64"; cp -L "$src" "$root/lib64/$base"; continue ;; esac
    mkdir -p "$root/lib/x86_64-linux-gnu"
    [ -e "$root/lib/x86_64-linux-gnu/$base" ] || [ -e "$root/usr/lib/x86_64-linux-gnu/$base" ] || \
      cp -L "$src" "$root/lib/x86_64-linux-gnu/$base"
  done
}

# /guest/vmlinuz (bzImage, xz inside) and /guest/vmlinux (uncompressed ELF, 66 MB, 12 MB
# in the gz cpio). libxc decompresses a bzImage in dom0 userspace, which under TCG
# costs ~5 s per "xl create"; with the ELF, xl create takes ~1.2 s instead of ~6 s.
install_guest_kernel() {
  local r=$1 kv; kv=$(kver)
  mkdir -p "$r/guest"
  cp "$EXT/boot/vmlinuz-$kv" "$r/guest/vmlinuz"
  cp "$GUEST_INITRD" "$r/guest/initrd.gz"
  if [ ! -f "$IMG/vmlinux" ]; then
    # the payload is xz (Debian 12's 6.1) or zstd (Debian 13's 6.12)
    local off magic unpack
    for magic in '\xfd7zXZ\x00:xz' '\x28\xb5\x2f\xfd:zstd'; do
      off=$(LC_ALL=C grep -obUaP "${magic%:*}" "$EXT/boot/vmlinuz-$kv" | head -1 | cut -d: -f1 || true)
      [ -n "$off" ] && { unpack=${magic##*:}; break; }
    done
    if [ -n "$off" ]; then
      tail -c +$((off + 1)) "$EXT/boot/vmlinuz-$kv" | "$unpack" -dc 2>/dev/null >"$IMG/vmlinux.tmp" || true  # trailing data => rc!=0
      if head -c 4 "$IMG/vmlinux.tmp" | grep -q ELF; then mv "$IMG/vmlinux.tmp" "$IMG/vmlinux"; else rm -f "$IMG/vmlinux.tmp"; fi
    fi
  fi
  [ -f "$IMG/vmlinux" ] && cp "$IMG/vmlinux" "$r/guest/vmlinux"
  return 0
}

build_dom0_busybox() {
  local r=$IMG/dom0-root-v$IMAGE_VERSION.$$ kv; kv=$(kver)
  rm -rf "$r"; mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,usr/lib/x86_64-linux-gnu,lib/x86_64-linux-gnu,lib64,etc,proc,sys,dev,run,tmp,var/lib/xen,var/log/xen,root,guest,nx}
  cp "$(ext_path bin/busybox)" "$r/bin/busybox"
  local a
  for a in $("$r/bin/busybox" --list-full); do
    [ -e "$r/$a" ] || ln -s /bin/busybox "$r/$a"
  done
  # Xen tools (real binaries, not Debian's /usr/sbin wrapper scripts)
  mkdir -p "$r/usr/lib/xen-$XENVER"
  cp -a "$EXT/usr/lib/xen-$XENVER/bin" "$EXT/usr/lib/xen-$XENVER/boot" "$r/usr/lib/xen-$XENVER/"
  cp -a "$EXT"/usr/bin/xenstore* "$r/usr/bin/"
  cp -a "$EXT"/usr/lib/x86_64-linux-gnu/lib{xen,yajl,xlutil}* "$r/usr/lib/x86_64-linux-gnu/"
  cp -a "$EXT/etc/xen" "$r/etc/"
  copy_libs_for "$r" "$r"/usr/lib/xen-$XENVER/bin/* "$r/usr/bin/xenstore"
  # glibc dlopen()s libgcc_s for pthread_cancel (xl aborts at exit without it)
  cp -L "$(ext_path lib/x86_64-linux-gnu/libgcc_s.so.1)" "$r/lib/x86_64-linux-gnu/"
  # kernel modules needed by the toolstack (built as modules in both 6.1 and 6.12);
  # 6.12's are xz-compressed, which busybox insmod does not read: store them plain
  local m
  for m in $XEN_MODULES; do
    copy_module "$m" "$r/lib/modules/$kv/$m.ko" || die "dom0 module $m not in the kernel package"
  done
  echo "$XEN_MODULES" >"$r/etc/nx-modules"
  echo "root:x:0:0:root:/root:/bin/sh" >"$r/etc/passwd"
  echo "root:x:0:" >"$r/etc/group"
  # guest (domU) kernel + initrd, usable by tests
  install_guest_kernel "$r"
  write_dom0_init "$r/init"
  (cd "$r" && find . | cpio -o -H newc -R 0:0 --quiet | gzip -1) >"$DOM0_BASE.tmp.$$"
  mv "$DOM0_BASE.tmp.$$" "$DOM0_BASE"
  rm -rf "$r"
}

prepare() {
  local t0; t0=$(now)
  ensure_host_tools
  prepare_download
  prepare_extract
  mkdir -p "$IMG"
  local kv; kv=$(kver)
  [ -f "$IMG/xen.elf" ] || zcat "$EXT/boot/xen-$XENVER-amd64.gz" >"$IMG/xen.elf"   # 32-bit ELF w/ multiboot hdr
  [ -f "$IMG/vmlinuz" ] || cp "$EXT/boot/vmlinuz-$kv" "$IMG/vmlinuz"
  build_guest_initrd
  prepare_guest_grub
  prepare_qemu_xen
  local t1; t1=$(now)
  case $FLAVOR in
    busybox)     [ -f "$DOM0_BASE" ] || { build_dom0_busybox; log "busybox dom0 initramfs built in $(elapsed "$t1")s ($(du -h "$DOM0_BASE" | cut -f1))"; }
                 BASE_CPIO=$DOM0_BASE ;;
    *) die "unknown flavor $FLAVOR" ;;
  esac
  build_guest_disk   # after the dom0 image, which unpacks $IMG/vmlinux
  log "prepare total $(elapsed "$t0")s"
}

# ---------------------------------------------------------------- default self test

# ---------------------------------------------------------------- run
prepare
[ $PREPARE_ONLY = 1 ] && exit 0

[ -n "$OUT" ] || OUT=$WORK/run-$(date +%Y%m%d-%H%M%S)-$$
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
OV=$OUT/overlay
rm -rf "$OV"; mkdir -p "$OV/nx"
write_dom0_init "$OV/init"    # overrides the base archive's copy (later cpio entries win)
mkdir -p "$OV/etc"; echo "$XENSTORED" >"$OV/etc/nx-xenstored"
add_guest_grub "$OV"
if [ $# -gt 0 ]; then
  { echo '#!/bin/sh'; printf '%q ' "$@" | sed 's/^/exec /'; echo; } >"$OV/nx/test.sh"
  # a single argument is treated as a shell snippet (so "xl info; xl list" works)
  [ $# -eq 1 ] && { echo '#!/bin/sh'; echo "$1"; } >"$OV/nx/test.sh"
  chmod +x "$OV/nx/test.sh"
else
  cp "$HERE/selftest.sh" "$OV/nx/test.sh"; chmod +x "$OV/nx/test.sh"
fi
for spec in "${FILES[@]}"; do
  src=${spec%%:*}; dst=${spec#*:}; [ "$dst" = "$spec" ] && dst=/usr/local/bin/$(basename "$src")
  mkdir -p "$OV/$(dirname "$dst")"; cp -a "$src" "$OV/$dst"
done
(cd "$OV" && find . | cpio -o -H newc -R 0:0 --quiet | gzip -1) >"$OUT/overlay.cpio.gz"
QEMU_XEN_PART=(); [ "$XENVER" = 4.17 ] && [ -f "$QEMU_XEN_CPIO" ] && QEMU_XEN_PART=("$QEMU_XEN_CPIO")
cat "$BASE_CPIO" "${QEMU_XEN_PART[@]}" "$OUT/overlay.cpio.gz" >"$OUT/dom0.cpio.gz"   # concatenated cpio archives are fine for Linux

case $ACCEL in
  # -smap: under TCG, Xen's PV dom0 dies at its first exception bounce with SMAP on
  tcg) ACCEL_ARGS=(-accel "${NX_TCG:-tcg,thread=multi}" -cpu "${NX_CPU:-max,-smap}") ;;
  kvm) ACCEL_ARGS=(-accel kvm -cpu "${NX_CPU:-host,-arch-capabilities}") ;;
  *) die "unknown accel $ACCEL" ;;
esac
# spec-ctrl=eager-fpu: Xen switches FPU/SSE state lazily on AMD CPUs (CR0.TS
# and the #NM trap) unless told otherwise, and under QEMU's TCG that leaks one
# domain's SSE registers into another: as soon as any guest (PV or PVH, xl's
# or ours) runs, dom0 processes compute wrong results (a copy-and-compare
# loop failed within a second in every one of 12 guest boots; 0 of 6 with
# eager switching, 0 without guests) and guests crash or hang. Eager
# switching saves and restores the state on every context switch instead.
XEN_CMD="console=com1 com1=115200,8n1 dom0_mem=${DOM0MEM}M,max:${DOM0MEM}M dom0_max_vcpus=$NCPU loglvl=all guest_loglvl=all bootscrub=0 spec-ctrl=eager-fpu $XEN_EXTRA"
DOM0_CMD="console=hvc0 earlyprintk=xen panic=-1 loglevel=4 $DOM0_EXTRA"
# dom0 kernel: the uncompressed ELF if we have it (Xen decompresses an xz bzImage
# itself, which under TCG adds ~3 s to every boot), else the bzImage
DOM0_KERNEL=$IMG/vmlinuz; [ -f "$IMG/vmlinux" ] && DOM0_KERNEL=$IMG/vmlinux
# QEMU multiboot: modules are "file args" separated by commas; commas inside args must be doubled
QEMU_DATA_ARGS=()
if [ -n "${NX_QEMU_DATA:-}" ]; then
  IFS=: read -r -a qd <<<"$NX_QEMU_DATA"; for d in "${qd[@]}"; do QEMU_DATA_ARGS+=(-L "$d"); done
fi
QEMU=("${NX_QEMU_BIN:-qemu-system-x86_64}" "${QEMU_DATA_ARGS[@]}" -nodefaults -machine pc "${ACCEL_ARGS[@]}" -m "$QMEM" -smp "$NCPU"
      -display none -vga none -no-reboot
      -serial "file:$OUT/console.log" -serial "file:$OUT/output.txt"
      -kernel "$IMG/xen.elf" -append "$XEN_CMD"
      -initrd "$DOM0_KERNEL ${DOM0_CMD//,/,,},$OUT/dom0.cpio.gz")
printf '%q ' "${QEMU[@]}" >"$OUT/qemu-cmdline.txt"; echo >>"$OUT/qemu-cmdline.txt"
: >"$OUT/console.log"; : >"$OUT/output.txt"
log "booting Xen ($ACCEL) ..."
T_BOOT=$(now)
"${QEMU[@]}" </dev/null >"$OUT/qemu.stdout" 2>&1 &
QPID=$!
TAILPID=""
# never leave QEMU behind if the caller (e.g. a Go test timeout) kills us
trap 'kill $QPID ${TAILPID:-} 2>/dev/null || true' EXIT
trap 'exit 130' INT TERM
if [ $QUIET = 0 ]; then tail -n +1 -f "$OUT/console.log" >&2 & TAILPID=$!; fi
timed_out=0
t_dom0=""; t_ready=""
while kill -0 $QPID 2>/dev/null; do
  if [ -z "$t_dom0" ] && grep -q 'NX-STAGE dom0-userspace' "$OUT/console.log"; then t_dom0=$(elapsed "$T_BOOT"); fi
  if [ -z "$t_ready" ] && grep -q 'NX-STAGE toolstack-ready' "$OUT/console.log"; then t_ready=$(elapsed "$T_BOOT"); fi
  if grep -q 'KVM internal error' "$OUT/qemu.stdout" 2>/dev/null; then
    # QEMU pauses the VM (does not exit) on KVM emulation failures
    log "QEMU reported a KVM internal error (see $OUT/qemu.stdout), killing QEMU $QPID"
    kill $QPID 2>/dev/null || true; sleep 1; kill -9 $QPID 2>/dev/null || true; break
  fi
  if [ -z "$t_dom0" ] && awk -v a="$(now)" -v b="$T_BOOT" -v t="$DOM0_TIMEOUT" 'BEGIN{exit !(a-b>t)}'; then
    # a boot that hangs (seen: dom0 stuck after "PCI add device") would
    # otherwise hold the machine for the whole -t timeout
    log "NX-WARN dom0 userspace not reached after ${DOM0_TIMEOUT}s (NX_DOM0_TIMEOUT): boot stalled, killing QEMU $QPID"
    kill $QPID 2>/dev/null || true; sleep 2; kill -9 $QPID 2>/dev/null || true; break
  fi
  if awk -v a="$(now)" -v b="$T_BOOT" -v t="$TIMEOUT" 'BEGIN{exit !(a-b>t)}'; then
    timed_out=1; log "timeout after ${TIMEOUT}s, killing QEMU $QPID"; kill $QPID 2>/dev/null || true; sleep 2; kill -9 $QPID 2>/dev/null || true; break
  fi
  sleep 0.2
done
wait $QPID 2>/dev/null || true
[ -n "$TAILPID" ] && { sleep 0.3; kill "$TAILPID" 2>/dev/null || true; wait "$TAILPID" 2>/dev/null || true; }
T_TOTAL=$(elapsed "$T_BOOT")
RC=$(grep -a -o 'NX-RC=[0-9]*' "$OUT/console.log" | tail -1 | cut -d= -f2 || true)
if grep -q 'NX-RESULT-CHANNEL /dev/console' "$OUT/console.log"; then
  sed -n '/NX-OUTPUT-BEGIN/,/NX-OUTPUT-END/p' "$OUT/console.log" | sed '1d;$d' | grep -av '^(XEN)' >"$OUT/output.txt" || true
fi
{
  echo "accel=$ACCEL xenstored=$XENSTORED qemu_mem=${QMEM}M dom0_mem=${DOM0MEM}M cpus=$NCPU"
  echo "boot_to_dom0_userspace_s=${t_dom0:-n/a}"
  echo "boot_to_toolstack_ready_s=${t_ready:-n/a}"
  echo "qemu_total_s=$T_TOTAL"
  echo "rc=${RC:-none} timed_out=$timed_out"
} >"$OUT/timings.txt"
[ -n "${NX_KEEP:-}" ] || rm -rf "$OUT/dom0.cpio.gz" "$OUT/overlay"
cat "$OUT/output.txt"
log "$(tr '\n' ' ' <"$OUT/timings.txt")"
log "results in $OUT"
if [ $timed_out = 1 ]; then echo 124 >"$OUT/rc"; exit 124; fi
if [ -z "$RC" ]; then
  echo 125 >"$OUT/rc"
  grep -a -E 'Panic|crashed|Kernel panic|KVM internal error' "$OUT/console.log" "$OUT/qemu.stdout" >&2 || true
  die "no NX-RC marker (boot failure?); see $OUT/console.log"
fi
echo "$RC" >"$OUT/rc"
exit "$RC"
