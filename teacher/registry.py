"""The one registry of teachers: fusion teachers (IR + VIS -> fused target), baselines, and RGB->IR generators.

Entries name their implementation as "module:attribute" and are imported only when used, so `fusion teacher list`
needs neither torch nor diffusers, and a missing extra is reported for the one teacher that needs it.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from runtime.errors import FusionError


@dataclass(frozen=True)
class TeacherEntry:
    name: str
    kind: str  # "fusion" (a teacher that makes targets), "baseline" (a reference fusion), "irgen" (RGB -> IR)
    target: str  # "module:attribute" of the implementation
    summary: str
    needs_weights: bool = False


TEACHERS: dict[str, TeacherEntry] = {}


def register(entry: TeacherEntry) -> TeacherEntry:
    if entry.name in TEACHERS:
        raise ValueError(f"teacher '{entry.name}' is registered twice")
    TEACHERS[entry.name] = entry
    return entry


for _entry in (
    TeacherEntry("em", "fusion", "teacher.em:EMTeacher",
                 "DDFM's hierarchical Bayesian EM fusion run to convergence; no weights, the default teacher"),
    TeacherEntry("gff", "fusion", "teacher.multiscale:GuidedFilterFusion",
                 "guided-filtering fusion (Li, Kang, Hu, IEEE TIP 2013): two scales, saliency weights refined by "
                 "guided filters; no weights"),
    TeacherEntry("vsmwls", "fusion", "teacher.multiscale:VSMWLSFusion",
                 "visual-saliency-map + weighted-least-squares fusion (Ma et al., Infrared Phys. Technol. 2017): "
                 "rolling-guidance multi-scale decomposition; no weights"),
    TeacherEntry("pyramid", "fusion", "teacher.multiscale:SaliencyPyramidFusion",
                 "Laplacian pyramid with salient-source bands and a soft-max base: keeps what is bright in either "
                 "camera, day and night; no weights"),
    TeacherEntry("pyramid-sharp", "fusion", "teacher.multiscale:SharpPyramidFusion",
                 "`pyramid` with its band-pass levels x1.1: sharper targets, the v2 students' teacher; no weights"),
    TeacherEntry("ddfm", "fusion", "teacher.ddfm:DDFMTeacher",
                 "DDFM diffusion sampler: unconditional diffusion prior + EM likelihood step (needs a prior folder)",
                 needs_weights=True),
    TeacherEntry("mean", "baseline", "teacher.baselines:MeanFusion", "average of IR and VIS luminance"),
    TeacherEntry("max", "baseline", "teacher.baselines:MaxFusion", "per-pixel maximum of IR and VIS luminance"),
    TeacherEntry("laplacian", "baseline", "teacher.baselines:LaplacianPyramidFusion",
                 "classical Laplacian-pyramid fusion (max-abs detail, averaged base)"),
    TeacherEntry("tqd", "irgen", "teacher.irgen.tqd:ThermalQueryDecoderGenerator",
                 "RGB->IR thermal query decoder (DETR/DDColor-style queries over a ResNet backbone)",
                 needs_weights=True),
    TeacherEntry("decomp", "irgen", "teacher.irgen.decomp:DecompositionGenerator",
                 "RGB->IR physics-inspired decomposition (intensity, material, context heads)", needs_weights=True),
    TeacherEntry("sd-img2img", "irgen", "teacher.irgen.sd:SDImg2ImgGenerator",
                 "RGB->IR Stable Diffusion img2img with a thermal LoRA (local base weights)", needs_weights=True),
    TeacherEntry("flux-fill", "irgen", "teacher.irgen.flux:FluxFillGenerator",
                 "RGB->IR FLUX.1-Fill diptych in-context editing with a thermal LoRA (local base weights)",
                 needs_weights=True),
    TeacherEntry("sd-text", "irgen", "teacher.irgen.sd:SDTextGenerator",
                 "text-to-IR sampling with a DreamBooth-fine-tuned SD 1.5 (local weights)", needs_weights=True),
):
    register(_entry)


def get_entry(name: str, kind: str | tuple[str, ...] | None = None) -> TeacherEntry:
    kinds = (kind,) if isinstance(kind, str) else kind
    candidates = {n: e for n, e in TEACHERS.items() if kinds is None or e.kind in kinds}
    if name not in candidates:
        raise FusionError(f"unknown {'/'.join(kinds) if kinds else ''} teacher '{name}'; choose one of: "
                          f"{', '.join(candidates)} (`fusion teacher list` describes them)")
    return candidates[name]


def load_teacher_class(name: str, kind: str | tuple[str, ...] | None = None):
    """The implementation registered under `name` (imported now)."""
    entry = get_entry(name, kind)
    module_name, attribute = entry.target.split(":")
    module = importlib.import_module(module_name)
    return getattr(module, attribute)
