"""Published figures (from the authors' releases, counted with fvcore), shown beside ours.

Params in millions, MACs at 224 in G, ImageNet-1K top-1 in % where published.
"""

REFERENCE_FIGURES: dict[str, dict[str, float]] = {
    "metaformer_ppaa_s12": dict(params=16.54, macs=2.56, top1=81.0),
    "schemeformer_ppaa_s12_e4_g2": dict(params=11.82, macs=1.77),
    "schemeformer_ppaa_s12_e8_g2": dict(params=16.55, macs=2.56),
    "schemeformer_ppaa_s12_e8_g4": dict(params=11.83, macs=1.77, top1=79.7),
    "schemeformer_ppaa_s12_e8_g4_shuffle": dict(params=11.83, macs=1.77),
    "schemeformer_ppaa_s12_e8_g8": dict(params=9.47, macs=1.37),
    "schemeformer_ppaa_s12_e16_g8": dict(params=11.86, macs=1.77),
    "metaformer_ppaa_s24": dict(params=30.57, macs=4.89),
    "schemeformer_ppaa_s24_e8_g4": dict(params=21.16, macs=3.31),
    "metaformer_ppaa_s36": dict(params=44.60, macs=7.21),
    "schemeformer_ppaa_s36_e8_g4": dict(params=30.48, macs=4.84),
    "groupmixformer_m": dict(params=5.73, macs=1.35, top1=79.6),
    "groupmixformer_t": dict(params=10.95, macs=3.72, top1=82.6),
    "groupmixformer_s": dict(params=22.42, macs=5.16, top1=83.4),
    "groupmixformer_b": dict(params=45.83, macs=17.55, top1=84.7),
    "groupmixformer_l": dict(params=71.83, macs=38.25, top1=85.0),
}
