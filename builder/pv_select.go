package builder

import (
	"context"

	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// ByType is a domain.Builder that picks the builder for spec.Type: PV
// guests go to PV, PVH (and unspecified) ones to PVH. HVM is refused by
// the PVH builder.
type ByType struct {
	PV  domain.Builder
	PVH domain.Builder
}

var _ domain.Builder = (*ByType)(nil)

// NewByType returns a ByType with the PV and PVH builders sharing cfg.
func NewByType(cfg Config) *ByType { return &ByType{PV: NewPV(cfg), PVH: New(cfg)} }

// Build implements domain.Builder.
func (b *ByType) Build(ctx context.Context, hv xenctrl.Hypervisor, d xenctrl.Domid, spec domain.Spec) (domain.BuildResult, error) {
	if spec.Type == domain.TypePV {
		return b.PV.Build(ctx, hv, d, spec)
	}
	return b.PVH.Build(ctx, hv, d, spec)
}
