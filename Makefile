# One-command set-up, tests and demo. `make setup` is idempotent: it rebuilds .venv only when setup.py or the
# constraints change. The pinned torch pair installs first so a loose `torch` requirement cannot pull another build.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRAS ?= train,teacher,export,dev
PYTEST_ARGS ?=

.PHONY: setup test demo weights targets clean-venv

setup: $(STAMP)

$(STAMP): setup.py constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q -c constraints.txt torch torchvision
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS) tests

clean-venv:
	rm -rf $(VENV)

# RGB->IR generators (docs/irgen.md): train tqd and decomp on the 171 training pairs with the CPU configs, then
# synthesise IR for the 50 test RGB frames and compare with the real IR (PSNR/SSIM, baselines, picture grids).
IRGEN_DATA ?= ../shared/data/roadscene
IRGEN_OUT  ?= build/irgen
.PHONY: irgen-train irgen-eval
irgen-train: setup
	for g in tqd decomp; do $(BIN)/fusion teacher train-irgen --generator $$g --data $(IRGEN_DATA) \
	  --names $(IRGEN_DATA)/train.txt --config configs/irgen/$${g}_cpu.yaml --out $(IRGEN_OUT)/$$g --resume || exit 1; done

irgen-eval: setup
	for g in tqd decomp; do $(BIN)/fusion teacher synth-ir --generator $$g --weights $(IRGEN_OUT)/$$g \
	  --rgb $(IRGEN_DATA)/vi --names $(IRGEN_DATA)/test.txt --out $(IRGEN_OUT)/synth/$$g-test --visualize \
	  --resume || exit 1; done
	$(BIN)/python -m teacher.irgen.evaluate --data $(IRGEN_DATA) --names $(IRGEN_DATA)/test.txt \
	  --train-names $(IRGEN_DATA)/train.txt --pred tqd=$(IRGEN_OUT)/synth/tqd-test \
	  --pred decomp=$(IRGEN_OUT)/synth/decomp-test --out $(IRGEN_OUT)/eval --grid 6

# Student from synthetic pairs (docs/irgen.md): for each of IRGEN_STUDENT_GENS, IR for the 171 TRAIN RGB frames (a
# trained generator through synth-ir, or a `*-luminance` baseline as the control), em targets on that IR + the real
# VIS, and the configs/irgen/student_cpu.yaml student trained on them; the same student on the real pairs (`targets`);
# all evaluated on the REAL 50 test pairs beside the em teacher, once per seed of IRGEN_STUDENT_SEEDS (seed 0 in
# runs/irgen/student-<data>, seed S in runs/irgen/student-<data>-seedS). Every step resumes: rerun to finish.
IRGEN_STUDENT_GENS ?= tqd decomp inverted-luminance
IRGEN_STUDENT_SEEDS ?= 0 1 2 3
IRGEN_RUNS ?= runs/irgen
IRGEN_TEST_TEACHER ?= build/teacher/roadscene_test/em
irgen_suffix = $(if $(filter 0,$(1)),,-seed$(1))
.PHONY: irgen-student
irgen-student: setup targets
	$(BIN)/fusion teacher fuse --teacher em --data $(IRGEN_DATA) --names $(IRGEN_DATA)/test.txt \
	  --out $(IRGEN_TEST_TEACHER) --resume --threads 1 --device cpu
	for g in $(IRGEN_STUDENT_GENS); do syn=$(IRGEN_OUT)/synth/$$g-train; \
	  case $$g in *-luminance) $(BIN)/python -m teacher.irgen.baseline_dataset --kind $$g --rgb $(IRGEN_DATA)/vi \
	      --names $(IRGEN_DATA)/train.txt --out $$syn --resume || exit 1;; \
	    *) $(BIN)/fusion teacher synth-ir --generator $$g --weights $(IRGEN_OUT)/$$g --rgb $(IRGEN_DATA)/vi \
	      --names $(IRGEN_DATA)/train.txt --out $$syn --resume || exit 1;; esac; \
	  $(BIN)/fusion teacher fuse --teacher em --data $$syn --names $(IRGEN_DATA)/train.txt \
	    --out $$syn/TEACHER_FUSED --resume --threads 1 --device cpu || exit 1; done
	for s in $(IRGEN_STUDENT_SEEDS); do suf=; [ $$s = 0 ] || suf=-seed$$s; \
	  for data in real $(addprefix synth-,$(IRGEN_STUDENT_GENS)); do run=student-$$data$$suf; \
	    case $$data in real) paths=;; *) syn=$(IRGEN_OUT)/synth/$${data#synth-}-train; \
	      paths="data.root=$$syn data.teacher_dir=$$syn/TEACHER_FUSED";; esac; \
	    $(BIN)/fusion distill train --config configs/irgen/student_cpu.yaml seed=$$s $$paths \
	      run_dir=$(IRGEN_RUNS)/$$run || exit 1; \
	    [ $(IRGEN_RUNS)/eval/$$run/metrics.json -nt $(IRGEN_RUNS)/$$run/best/model.safetensors ] || \
	    $(BIN)/fusion distill eval --weights $(IRGEN_RUNS)/$$run/best --data $(IRGEN_DATA) --names test.txt \
	      --teacher-dir $(IRGEN_TEST_TEACHER) --threads 1 --no-profile --out $(IRGEN_RUNS)/eval/$$run || exit 1; \
	  done; done
	$(BIN)/python -m benchmarks.irgen_students --out $(IRGEN_RUNS)/eval/students.md --paired real \
	  $(foreach s,$(IRGEN_STUDENT_SEEDS),$(foreach d,real $(addprefix synth-,$(IRGEN_STUDENT_GENS)),\
	    --run $(d)$(call irgen_suffix,$(s))=$(IRGEN_RUNS)/eval/student-$(d)$(call irgen_suffix,$(s))))

# Held-out variant of irgen-student (docs/irgen.md): tqd trained on the first 86 training pairs (sorted names: other
# drives than the rest), IR synthesised for the other 85 training frames, which the generator never saw; the student
# trained there on synth-IR vs on the real IR of the same 85 pairs (em targets), both scored on the REAL test pairs.
# Run after irgen-eval and irgen-student: it compares with their tqd IR of the test and training frames.
IRGEN_HELDOUT ?= $(IRGEN_OUT)/heldout
IRGEN_HELDOUT_SEEDS ?= 0 1 2 3
.PHONY: irgen-heldout
irgen-heldout: setup targets
	mkdir -p $(IRGEN_HELDOUT)
	sort $(IRGEN_DATA)/train.txt | head -n 86 > $(IRGEN_HELDOUT)/gen_a.txt
	sort $(IRGEN_DATA)/train.txt | tail -n +87 > $(IRGEN_HELDOUT)/student_b.txt
	$(BIN)/fusion teacher train-irgen --generator tqd --data $(IRGEN_DATA) --names $(IRGEN_HELDOUT)/gen_a.txt \
	  --config configs/irgen/tqd_cpu.yaml --out $(IRGEN_HELDOUT)/tqd-a --resume
	$(BIN)/fusion teacher synth-ir --generator tqd --weights $(IRGEN_HELDOUT)/tqd-a --rgb $(IRGEN_DATA)/vi \
	  --names $(IRGEN_HELDOUT)/student_b.txt --out $(IRGEN_HELDOUT)/synth-tqd-a-on-b --resume
	$(BIN)/fusion teacher fuse --teacher em --data $(IRGEN_HELDOUT)/synth-tqd-a-on-b --names $(IRGEN_HELDOUT)/student_b.txt \
	  --out $(IRGEN_HELDOUT)/synth-tqd-a-on-b/TEACHER_FUSED --resume --threads 1 --device cpu
	$(BIN)/fusion teacher fuse --teacher em --data $(IRGEN_DATA) --names $(IRGEN_DATA)/test.txt \
	  --out $(IRGEN_TEST_TEACHER) --resume --threads 1 --device cpu
	for s in $(IRGEN_HELDOUT_SEEDS); do for data in real synth; do run=heldout/student-b-$$data-seed$$s; \
	    case $$data in real) paths="data.teacher_dir=$(TEACHER_OUT)";; *) syn=$(IRGEN_HELDOUT)/synth-tqd-a-on-b; \
	      paths="data.root=$$syn data.teacher_dir=$$syn/TEACHER_FUSED";; esac; \
	    $(BIN)/fusion distill train --config configs/irgen/student_cpu.yaml seed=$$s \
	      data.names=$(IRGEN_HELDOUT)/student_b.txt $$paths run_dir=$(IRGEN_RUNS)/$$run || exit 1; \
	    [ $(IRGEN_RUNS)/eval/heldout-b-$$data-seed$$s/metrics.json -nt $(IRGEN_RUNS)/$$run/best/model.safetensors ] || \
	    $(BIN)/fusion distill eval --weights $(IRGEN_RUNS)/$$run/best --data $(IRGEN_DATA) --names test.txt \
	      --teacher-dir $(IRGEN_TEST_TEACHER) --threads 1 --no-profile --out $(IRGEN_RUNS)/eval/heldout-b-$$data-seed$$s \
	      || exit 1; done; done
	$(BIN)/fusion teacher synth-ir --generator tqd --weights $(IRGEN_HELDOUT)/tqd-a --rgb $(IRGEN_DATA)/vi \
	  --names $(IRGEN_DATA)/test.txt --out $(IRGEN_HELDOUT)/tqd-a-test --resume
	$(BIN)/python -m teacher.irgen.evaluate --data $(IRGEN_DATA) --names $(IRGEN_DATA)/test.txt \
	  --pred tqd-a=$(IRGEN_HELDOUT)/tqd-a-test --pred tqd-all=$(IRGEN_OUT)/synth/tqd-test --out $(IRGEN_HELDOUT)/eval-test --grid 0
	$(BIN)/python -m teacher.irgen.evaluate --data $(IRGEN_DATA) --names $(IRGEN_HELDOUT)/student_b.txt \
	  --pred tqd-a-unseen=$(IRGEN_HELDOUT)/synth-tqd-a-on-b --pred tqd-all-seen=$(IRGEN_OUT)/synth/tqd-train \
	  --out $(IRGEN_HELDOUT)/eval-b --grid 4
	$(BIN)/python -m benchmarks.irgen_students --out $(IRGEN_RUNS)/eval/heldout.md --paired b-real \
	  $(foreach s,$(IRGEN_HELDOUT_SEEDS),--run b-real-seed$(s)=$(IRGEN_RUNS)/eval/heldout-b-real-seed$(s) \
	    --run b-synth-tqd-a-seed$(s)=$(IRGEN_RUNS)/eval/heldout-b-synth-seed$(s))

# Export (docs/export.md): the shipped INT8 QDQ models of the default student, calibrated as the README's INT8 line
# does (train.txt of RoadScene; every recipe built, the best PSNR against fp32 on held-out training pairs kept, within
# --max-metric-drop), dynamic like model.onnx; the report on test.txt goes to <model>.json. Then the done-when check
# of the CPU model against the fp32 student on the 50 test pairs (python -m export.int8_check: median PSNR >= 45 dB,
# VIF and Qabf at most 0.02 below fp32; it fails the target otherwise). The TensorRT form (symmetric activations)
# loses more (VIF -0.024 static at 480x640, docs/export.md), so its export allows 0.03.
INT8_CALIB = --calib $(DATA)/roadscene --calib-names $(DATA)/roadscene/train.txt
.PHONY: export-int8
export-int8: setup
	$(BIN)/fusion export --weights default --format onnx-int8 $(INT8_CALIB) --dynamic \
	  --out runtime/models/default/model.int8.onnx
	$(BIN)/fusion export --weights default --format onnx-int8 $(INT8_CALIB) --qdq-target tensorrt --dynamic \
	  --max-metric-drop VIF=0.03,Qabf=0.03 --out runtime/models/default/model.int8.trt.onnx
	$(BIN)/python -m export.int8_check runtime/models/default/model.int8.onnx --data $(DATA)/roadscene

# Teacher (docs/teacher.md): EM fusion targets for the training split, resumable (rerun to finish an interrupted
# build); the distillation stage reads them from build/teacher/roadscene/TEACHER_FUSED/<stem>.png.
DATA ?= ../shared/data
TEACHER_OUT ?= build/teacher/roadscene/TEACHER_FUSED
targets:
	$(BIN)/fusion teacher fuse --teacher em --data $(DATA)/roadscene --names $(DATA)/roadscene/train.txt \
	  --out $(TEACHER_OUT) --resume

# Metrics (docs/metrics.md): speed of distill.metrics against the straightforward scipy formulation, one thread,
# on real RoadScene test pairs; fails if any metric differs by more than 1e-4 relative or the speed-up is below 10x.
.PHONY: bench-metrics
bench-metrics: setup
	$(BIN)/python benchmarks/bench_metrics.py --pairs 8

# Runtime demo (docs/runtime.md): fusion-run headless on the bundled clips (real RoadScene training pairs with a
# panning/zooming virtual camera; IR 320x240 at 9 fps, VIS 640x480 at 30 fps) with the shipped default model; writes
# build/demo/fused.mp4 and build/demo/stats.json and prints the per-stage latency table.
DEMO_OUT ?= build/demo
DEMO_MODEL ?= runtime/models/default/model.onnx
demo: setup
	@test -f $(DEMO_MODEL) || { echo "make demo: the default model $(DEMO_MODEL) is not there yet; build it with \`make weights\` (or run with DEMO_MODEL=path/to/model.onnx)" >&2; exit 2; }
	@test -f runtime/assets/samples/vis.mp4 || $(BIN)/python -m runtime.assets.make_samples
	$(BIN)/fusion-run --ir runtime/assets/samples/ir.mp4 --vis runtime/assets/samples/vis.mp4 --model $(DEMO_MODEL) \
	  --backend onnxruntime --imgsz 480x640 --headless --output $(DEMO_OUT)/fused.mp4 --stats $(DEMO_OUT)/stats.json

# Benchmarks (docs/bench.md): the student on every backend present, beside the SeAFusion/DenseFuse peers, the em
# teacher and the runtime pipeline; `bench` is the quick run (under two minutes on a CPU), `bench-full` the whole
# table (640x480 and 512x512, 50 runs). Results in runs/bench/ (results.md, results.json, latency_quality.png).
.PHONY: bench bench-full
bench: setup
	$(BIN)/fusion bench --quick
bench-full: setup
	$(BIN)/fusion bench

# Diffusion IR generators (docs/irgen_diffusion.md): the whole train-irgen -> synth-ir loop of sd-img2img, sd-text
# and flux-fill on tiny random base folders built in-process (no weights needed; the images mean nothing), 20 LoRA
# steps each on the CPU. Real runs take --base PATH to a local SD 1.5/2.1 or FLUX.1-Fill-dev diffusers folder.
SMOKE_OUT ?= build/irgen-diffusion-smoke
.PHONY: irgen-diffusion-smoke
irgen-diffusion-smoke: setup
	rm -rf $(SMOKE_OUT)
	$(BIN)/python -m teacher.irgen.diffusion_tiny sd $(SMOKE_OUT)/tiny-sd
	$(BIN)/python -m teacher.irgen.diffusion_tiny flux-fill $(SMOKE_OUT)/tiny-flux
	for gen in sd-img2img sd-text flux-fill; do base=$(SMOKE_OUT)/tiny-sd; [ $$gen = flux-fill ] && base=$(SMOKE_OUT)/tiny-flux; \
	  OMP_NUM_THREADS=1 $(BIN)/fusion teacher train-irgen --generator $$gen --base $$base --data $(DATA)/roadscene \
	    --names $(DATA)/roadscene/train.txt --config configs/irgen_diffusion/tiny_cpu.yaml --out $(SMOKE_OUT)/$$gen \
	    --device cpu || exit 1; done
	OMP_NUM_THREADS=1 $(BIN)/fusion teacher synth-ir --generator sd-img2img --weights $(SMOKE_OUT)/sd-img2img \
	  --rgb $(DATA)/roadscene --names $(DATA)/roadscene/test.txt --out $(SMOKE_OUT)/synth-sd --device cpu --steps 2
	OMP_NUM_THREADS=1 $(BIN)/fusion teacher synth-ir --generator flux-fill --weights $(SMOKE_OUT)/flux-fill \
	  --rgb $(DATA)/roadscene --names $(DATA)/roadscene/test.txt --out $(SMOKE_OUT)/synth-flux --device cpu --steps 2
	OMP_NUM_THREADS=1 $(BIN)/fusion teacher synth-ir --generator sd-text --weights $(SMOKE_OUT)/sd-text --count 4 \
	  --prompt "an infrared thermal frame of a street at night" --out $(SMOKE_OUT)/synth-text --device cpu --steps 2

# Distillation (docs/distill.md): the shipped default student. The `nano2` graph without pyramid levels (nano's body on
# the sources pooled 2x; configs/distill/default.yaml) trained on RoadScene train.txt (day) + LLVIP-mini train.txt
# (night) with capture-condition augmentation, its targets made online from each augmented batch by the zero-weights
# `pyramid-sharp` teacher (no target files to build); 3000 steps (15 min alone on one CPU thread here, 40 beside
# another run), rerun to resume (a finished run is not retrained). Its best EMA weights are copied into
# runtime/models/default/, exported there to a dynamic-size ONNX model (opset 17, checked in ONNX Runtime), and the
# INT8 models are re-made from it (export-int8). Then `make eval-default` scores it on every validation set. LLVIP's
# licence is non-commercial research only: so is the model trained on it (README).
DISTILL_CONFIG ?= configs/distill/default.yaml
DISTILL_RUN    ?= runs/distill/default
DEFAULT_MODEL  ?= runtime/models/default
weights: setup
	$(BIN)/fusion distill train --config $(DISTILL_CONFIG) run_dir=$(DISTILL_RUN)
	mkdir -p $(DEFAULT_MODEL)
	cp $(DISTILL_RUN)/best/config.json $(DISTILL_RUN)/best/model.safetensors $(DEFAULT_MODEL)/
	$(BIN)/fusion export --weights $(DEFAULT_MODEL) --format onnx --dynamic --out $(DEFAULT_MODEL)/model.onnx
	$(MAKE) export-int8

# The students shipped beside the default, each trained by configs/distill/NAME.yaml into runs/distill/NAME, copied to
# runtime/models/NAME (`--model NAME`, `--weights NAME`) and exported to ONNX there (docs/distill.md):
# - weights-nano: the default until 7 Dec 2026, kept for comparison: `nano` (v1 body at full resolution)
#   on `pyramid` targets, 128 px crops;
# - weights-nano2: the v2 student with gains per pyramid level, on `pyramid-sharp` targets, 256 px crops ("Student
#   v2"; 50 min on one CPU thread here);
# - weights-nano2-affine: the default of 7 Dec 2026 (run E of "Student v2"): nano2's graph without pyramid levels or
#   detail bands (one gain per source at 1/4 resolution), on `pyramid-sharp` targets;
# - weights-nano2-bands: the default of the evening of 7 Dec 2026 (run H4): detail bands, the network's affine model
#   alone below them (the default since adds the teacher's coarse rule there).
SHIPPED_STUDENTS = weights-nano weights-nano2 weights-nano2-affine weights-nano2-bands
.PHONY: $(SHIPPED_STUDENTS)
$(SHIPPED_STUDENTS): weights-%: setup
	$(BIN)/fusion distill train --config configs/distill/$*.yaml run_dir=runs/distill/$*
	mkdir -p runtime/models/$*
	cp runs/distill/$*/best/config.json runs/distill/$*/best/model.safetensors runtime/models/$*/
	$(BIN)/fusion export --weights runtime/models/$* --format onnx --dynamic --out runtime/models/$*/model.onnx

# - weights-rule: `rule`, zero weights: the default's fixed band and coarse rules without its network (nothing to
#   train: the registered variant is written as it is and exported; docs/distill.md "Student v2", run H5).
.PHONY: weights-rule
weights-rule: setup
	$(BIN)/python -c "from distill.models import create_student, save_student; save_student(create_student('rule'), 'runtime/models/rule', {'trained': False, 'note': 'no weights: the fixed rules of the default graph'})"
	$(BIN)/fusion export --weights runtime/models/rule --format onnx --dynamic --out runtime/models/rule/model.onnx

# Quality of the default model on every validation set (RoadScene test.txt, msrs_mini day and night, llvip_mini
# val.txt; never trained or tuned on): one table per set beside the pyramid teacher and the mean/max/laplacian
# baselines, the metrics where it falls below `mean`, and a picture grid per set (runs/distill/eval/default/).
.PHONY: eval-default teacher-compare
eval-default: setup
	$(BIN)/fusion distill eval --weights default --suite validation --threads 1 --out runs/distill/eval/default

# The zero-weights teachers beside em and the baselines on every validation set (runs/teacher/compare/summary.md).
teacher-compare: setup
	$(BIN)/python -m benchmarks.teacher_compare --suite validation --teachers pyramid,gff,vsmwls,em,laplacian,max,mean \
	  --out runs/teacher/compare

# GPU check (docs/distill.md, docs/runtime.md, docs/bench.md "GPU"): every GPU test and a smoke of each stage on CUDA
# (em targets for 20 pairs, 300 distillation steps with GPU augmentation, an fp16 engine when TensorRT is installed,
# fusion-run with --backend torch-gpu on the sample clips, fusion bench --quick GPU rows), one summary table; fails
# on any failure. `make gpu-check PY=python3` uses that interpreter and skips `make setup` (packages already there).
# Without a CUDA GPU it prints one line and fails (benchmarks/gpu_check.py exits 3; make reports it as 2).
PY ?=
GPU_CHECK_OUT ?= build/gpu-check
.PHONY: gpu-check
gpu-check: $(if $(PY),,setup)
	$(if $(PY),$(PY),$(BIN)/python) -m benchmarks.gpu_check --out $(GPU_CHECK_OUT) --data $(DATA)
