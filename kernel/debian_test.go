package kernel

import (
	"os"
	"path/filepath"
	"testing"
)

// debianKernels finds real distribution kernels to test with: $XENOPSD_TEST_KERNEL,
// the nested harness caches, and /boot. None is committed to the repository.
func debianKernels(t testing.TB) []string {
	var out []string
	if p := os.Getenv("XENOPSD_TEST_KERNEL"); p != "" {
		out = append(out, p)
	}
	home, _ := os.UserHomeDir()
	for _, pat := range []string{
		"../tests/nested/.work/extract/boot/vmlinuz-*",
		filepath.Join(home, ".cache/nested-xen/extract/boot/vmlinuz-*"),
		"/boot/vmlinuz-*",
	} {
		m, _ := filepath.Glob(pat)
		out = append(out, m...)
	}
	return out
}

func TestDebianKernel(t *testing.T) {
	ks := debianKernels(t)
	if len(ks) == 0 {
		t.Skip("no distribution kernel found (set XENOPSD_TEST_KERNEL or run the nested harness's prepare step)")
	}
	for _, k := range ks[:1] {
		data, err := os.ReadFile(k)
		if err != nil {
			t.Fatal(err)
		}
		elf, info, err := Unwrap(data, Limits{})
		if err != nil {
			t.Fatalf("%s: %v", k, err)
		}
		t.Logf("%s: boot protocol %#x, setup_sects %d, payload %s at %#x, %d bytes -> %d (trailer says %d)",
			k, info.Version, info.SetupSects, info.Compression, info.PayloadOffset, info.PayloadLength, info.DecompressedSz, info.DeclaredSize)
		if info.DeclaredSize != info.DecompressedSz {
			t.Errorf("declared size %d != decompressed %d", info.DeclaredSize, info.DecompressedSz)
		}
		img, err := ParseELF(elf, Limits{})
		if err != nil {
			t.Fatal(err)
		}
		n := img.Notes
		t.Logf("entry %#x, phys [%#x, %#x), %d segments, %d Xen notes", img.Entry, img.PhysStart, img.PhysEnd, len(img.Segments), n.Count)
		t.Logf("notes: PHYS32_ENTRY %#x (%v), ENTRY %#x, HYPERCALL_PAGE %#x, VIRT_BASE %#x, PADDR_OFFSET %#x, INIT_P2M %#x (%v), MOD_START_PFN %v, SUPPORTED_FEATURES %#x, GUEST_OS %q, LOADER %q, XEN_VERSION %q, FEATURES %q",
			n.Phys32Entry, n.HasPhys32Entry, n.Entry, n.HypercallPage, n.VirtBase, n.PaddrOffset, n.InitP2M, n.HasInitP2M, n.HasModStartPFN, n.SupportedFeatures, n.GuestOS, n.Loader, n.XenVersion, n.Features)
		if !n.HasPhys32Entry || !n.HasEntry || !n.HasVirtBase {
			t.Errorf("Linux notes missing: %+v", n)
		}
		if err := img.CheckPVH(); err != nil {
			t.Errorf("CheckPVH: %v", err)
		}
		full, err := Load(data, Limits{})
		if err != nil || full.Compression != "bzImage+"+info.Compression {
			t.Fatalf("Load: %v (%q)", err, full.Compression)
		}
	}
}
