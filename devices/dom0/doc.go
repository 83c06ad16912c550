// Package dom0 is the real devices.Host: dom0's side of virtual disks and
// NICs on a Linux dom0, done in Go with no shell-outs.
//
// # What libxl did, and what we do instead
//
// libxl writes a device's backend directory and then runs a hotplug script
// (tools/hotplug/Linux in Xen) that makes dom0 ready for the backend driver:
//
//   - block: for a regular file, `losetup` a free loop device over it
//     (read-only for a ro disk) and write the loop's "major:minor" to the
//     backend's physical-device node; a block device is used as it is.
//     Removal runs `losetup -d`.
//   - vif-bridge: when netback has created vif<domid>.<devid>, give it the
//     MAC fe:ff:ff:ff:ff:ff (the numerically largest unicast address, so the
//     bridge never takes it as its own), set its MTU (the backend's "mtu"
//     node if libxl wrote one, else the bridge's MTU), enslave it to the
//     bridge and bring it up. Removal takes it out of the bridge and down.
//
// Host does the same directly: loop devices through the kernel's loop
// ioctls (linux/loop.h) on /dev/loop-control and /dev/loopN, links through
// rtnetlink (github.com/vishvananda/netlink). It needs only the kernel's
// loop and bridge support, sysfs and devtmpfs: nothing from userspace.
// The xenstore side (physical-device, hotplug-status, the frontend's mtu)
// stays with package devices.
//
// # Model
//
// AttachDisk turns a path into a DiskAttachment: a block device as it is, a
// regular file through a loop device that is not autoclear (blkback opens
// it later, by number, and we detach it ourselves with DetachDisk). Callers
// persist the attachment's Loop name with the device record; FindDisk
// finds the loops backed by a file again (from sysfs) for a record written
// before its loop name was, e.g. after a crash in between. Detaching a loop
// that blkback still holds open is not refused by the kernel: it marks the
// loop autoclear and frees it at blkback's last close.
//
// ConnectVIF waits for netback's interface (a link subscription, with a
// slow poll as a safety net) until its context ends; it changes only what
// differs, so running it again on a connected vif (re-adoption after a
// restart) does not disturb the guest's traffic. DisconnectVIF is
// idempotent.
//
// StartQEMU runs the QEMU that serves a PV domain's qcow2 disks (qdisk
// backends): Debian's /usr/libexec/xen-qemu-system-i386 with QEMUArgs, in
// its own session so that it outlives the daemon, its output in
// /var/log/xen/qemu-dm-<domid>.log. A QEMU is known by pid and start time
// (/proc/<pid>/stat) and its -xen-domid, so a reused pid is never taken for
// it nor signalled; StopQEMU sends SIGTERM, then SIGKILL, and waits.
//
// DiskStats and VIFStats read the I/O counters `vm get` shows: blkback's
// statistics in sysfs and the vif's link statistics. Both wrap
// fs.ErrNotExist when the device is gone.
package dom0
