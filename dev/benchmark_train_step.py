#!/usr/bin/env python3
# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Time one training step (forward + backward + SGD update) of person-search configs on synthetic
images with persons, and print a Markdown table with each config's step time relative to the
first one (e.g. KD_reid against its baseline). For KD_det configs (a DetectorTeacher) the teacher's
share of a step is timed too, alone on the same batch: its backbone, RPN head and box head on as
many boxes per image as the student samples, without gradients; KD_det should cost the baseline
step plus about that. Nothing is read from disk but the configs (and the LUT files and teacher
checkpoints they name).

With --num-gpus N (detectron2's launcher; N CPU processes over gloo without a GPU) every process
steps its own batch under DDP, and the table adds the OIM memory sync (the all-gather of each
step's labeled features, read from its profiler label in extra profiled steps): its milliseconds
per step and its share of the step, on the main process.

    python dev/benchmark_train_step.py --config-file configs/scratch/oim_R_18_C4_scratch.yaml \
        configs/scratch/oim_R_50_C4_scratch.yaml --height 576 --width 768 --batch 2 \
        MODEL.DEVICE cpu
    python dev/benchmark_train_step.py --config-file configs/mot15/oim_R_50.yaml \
        configs/mot15/kd_reid_R_50.yaml --height 400 --width 680
    python dev/benchmark_train_step.py --config-file configs/mot15/reid_crop_R_18.yaml \
        configs/mot15/fd_crop_R_18.yaml   # crop networks: their own P x K crop batch

--seqnet-root PATH (a checkout of serend1p1ty/SeqNet) steps SeqNet too, fp32 with random weights
and its own training settings, on the same synthetic batch (personsearch_kd/utils/
seqnet_reference.py); give our configs the same settings to compare, e.g.:

    python dev/benchmark_train_step.py --config-file configs/scratch/oim_R_50_C4_scratch.yaml \
        --height 900 --width 1500 --batch 2 --seqnet-root ../SeqNet MODEL.DEVICE cpu \
        MODEL.RPN.PRE_NMS_TOPK_TRAIN 12000 MODEL.RPN.POST_NMS_TOPK_TRAIN 2000 \
        MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE 128 MODEL.OIM.NUM_IDS 5532 MODEL.OIM.QUEUE_SIZE 5000
"""

import argparse
import statistics
import time

import torch

from detectron2.engine import create_ddp_model, launch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils import comm
from detectron2.utils.events import EventStorage

from personsearch_kd import load_config
from personsearch_kd.engine import peak_memory_gb
from personsearch_kd.distillation import DetectorTeacher
from personsearch_kd.modeling import StudentRecord
from personsearch_kd.modeling.reid_losses import OIM_SYNC_LABEL
from personsearch_kd.utils.seqnet_reference import build_seqnet, seqnet_training_inputs

SEQNET = "SeqNet"


def synthetic_batch(batch: int, height: int, width: int, persons: int, num_ids: int, seed: int):
    """Random images with `persons` upright boxes each, half of them labeled."""
    g = torch.Generator().manual_seed(seed)
    inputs = []
    for _ in range(batch):
        w = torch.randint(width // 20, width // 8, (persons,), generator=g).float()
        h = 2.5 * w
        x0 = torch.rand(persons, generator=g) * (width - w)
        y0 = torch.rand(persons, generator=g) * (height - h).clamp(min=1)
        inst = Instances((height, width))
        inst.gt_boxes = Boxes(torch.stack([x0, y0, x0 + w, (y0 + h).clamp(max=height)], dim=1))
        inst.gt_classes = torch.zeros(persons, dtype=torch.int64)
        pids = torch.randint(0, num_ids, (persons,), generator=g)
        pids[persons // 2 :] = -1
        inst.gt_pids = pids
        image = torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8)
        inputs.append({"image": image, "instances": inst, "height": height, "width": width})
    return inputs


def synthetic_crops(batch: int, size, num_ids: int, seed: int, per_id: int = 4):
    """A P x K batch of random person crops (re-ID networks on crops, DATALOADER.PERSON_CROPS)."""
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "image": torch.randint(0, 256, (3, *size), generator=g, dtype=torch.uint8).float(),
            "person_id": (i // per_id) % num_ids,
        }
        for i in range(batch)
    ]


AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_config(config_file: str, args, precision: str = "fp32"):
    """The model, optimizer and batch of one config at one precision, ready to step."""
    cfg = load_config(config_file, args.opts, freeze=False)
    torch.manual_seed(0)
    seed = comm.get_rank()  # each process its own batch
    model = build_model(cfg).train()
    # DDP under several processes, as detectron2's trainer (buffers not broadcast); on CPU, DDP
    # takes no device_ids.
    on_gpu = model.device.type == "cuda"
    step_model = create_ddp_model(
        model, device_ids=[comm.get_local_rank()] if on_gpu else None, broadcast_buffers=False
    )
    fp16_on_gpu = precision == "fp16" and model.device.type == "cuda"
    # Crop networks step on their configured P x K batch of crops; detectors on images.
    inputs = (
        synthetic_crops(
            cfg.SOLVER.IMS_PER_BATCH, cfg.INPUT.REID_CROP.SIZE, cfg.MODEL.OIM.NUM_IDS, seed
        )
        if cfg.DATALOADER.PERSON_CROPS
        else synthetic_batch(
            args.batch, args.height, args.width, args.persons, cfg.MODEL.OIM.NUM_IDS, seed
        )
    )
    return {
        "config": config_file,
        "precision": precision,
        # Mixed precision as detectron2's AMPTrainer: autocast, and a gradient scaler for fp16.
        "scaler": torch.amp.GradScaler("cuda") if fp16_on_gpu else None,
        "cfg": cfg,
        "model": model,
        "device": model.device.type,
        "forward": lambda: step_model(inputs),  # the training losses
        "inputs": inputs,
        "optimizer": torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9),
        "times": [],
        "teacher_times": [],
        "sync_shares": [],
    }


def build_seqnet_run(args):
    """SeqNet stepped as a config (fp32) on the synthetic batch our configs get."""
    torch.manual_seed(0)
    model = build_seqnet(args.seqnet_root, args.height, args.width, device=args.seqnet_device)
    # Labeled pids below SeqNet's LUT size (5532).
    batch = synthetic_batch(args.batch, args.height, args.width, args.persons, 5532, seed=0)
    images, targets = seqnet_training_inputs(batch, args.seqnet_device)
    model.train()
    return {
        "config": SEQNET,
        "precision": "fp32",
        "scaler": None,
        "cfg": None,
        "model": model,
        "device": args.seqnet_device,
        "forward": lambda: model(images, targets),
        "optimizer": torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9),
        "times": [],
        "teacher_times": [],
        "sync_shares": [],
    }


def _synchronize(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train_step(run: dict) -> float:
    """Seconds of one forward + backward + SGD update."""
    start = time.perf_counter()
    dtype = AUTOCAST_DTYPES[run["precision"]]
    with torch.autocast(run["device"].split(":")[0], dtype=dtype, enabled=dtype is not None):
        losses = run["forward"]()
    run["optimizer"].zero_grad()
    total = sum(losses.values())
    if run["scaler"] is None:
        total.backward()
        run["optimizer"].step()
    else:
        run["scaler"].scale(total).backward()
        run["scaler"].step(run["optimizer"])
        run["scaler"].update()
    _synchronize(run["device"])
    return time.perf_counter() - start


def sync_share(run: dict) -> float:
    """Seconds of the OIM memory sync in one profiled training step of ``run``, and the step's."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        seconds = train_step(run)
    events = [e for e in profile.key_averages() if e.key == OIM_SYNC_LABEL]
    return sum(e.cpu_time_total for e in events) / 1e6, seconds


def detector_teachers(model) -> list:
    teachers = getattr(model, "teachers", {})  # SeqNet has none
    return [t for t in teachers.values() if isinstance(t, DetectorTeacher)]


def teacher_forward(run: dict) -> float:
    """
    Seconds of the detector teachers' work in one KD_det step of ``run``: backbone, RPN head and
    box head on ROI_HEADS.BATCH_SIZE_PER_IMAGE boxes per image, no gradients (0 without one).
    """
    model = run["model"]
    if not detector_teachers(model):
        return 0.0
    rois = run["cfg"].MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE
    # Which boxes does not matter for the time, only how many: each image's persons, repeated.
    sampled = []
    for x in run["inputs"]:
        boxes = x["instances"].gt_boxes.to(model.device)
        sampled.append(Instances(x["instances"].image_size))
        sampled[-1].proposal_boxes = Boxes(boxes.tensor.repeat(rois // len(boxes) + 1, 1)[:rois])
    record = StudentRecord(run["inputs"], {}, [], sampled, None, None, None)
    start = time.perf_counter()
    for teacher in detector_teachers(model):
        outputs = teacher.outputs(record)
        _ = outputs.rpn, outputs.boxes  # reading them runs the backbone (once), RPN and box head
    _synchronize(run["device"])
    return time.perf_counter() - start


def time_configs(args) -> list:
    """
    Step the configs in turns (step i of every config, then step i + 1), so that a change in the
    machine's load affects all of them alike and their ratios stay fair.
    """
    runs = [build_config(f, args, p) for f in args.config_file for p in args.precision]
    if args.seqnet_root:
        runs.append(build_seqnet_run(args))
    device = runs[0]["device"]
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with EventStorage():
        for i in range(args.warmup + args.iters):
            for run in runs:
                seconds = train_step(run)
                teacher = teacher_forward(run)
                if i >= args.warmup:
                    run["times"].append(seconds)
                    run["teacher_times"].append(teacher)
        if comm.get_world_size() > 1:
            for _ in range(args.iters):
                for run in runs:
                    run["sync_shares"].append(sync_share(run))
    reference = statistics.median(runs[0]["times"])
    return [
        {
            "config": run["config"],
            "precision": run["precision"],
            "depth": 50 if run["cfg"] is None else run["cfg"].MODEL.RESNETS.DEPTH,
            "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
            # Crop networks have no ROIs: their batch is SOLVER.IMS_PER_BATCH crops.
            "rois": (
                128  # SeqNet's BATCH_SIZE_TRAIN
                if run["cfg"] is None
                else "-"
                if run["cfg"].DATALOADER.PERSON_CROPS
                else run["cfg"].MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE
            ),
            "median": statistics.median(run["times"]),
            "min": min(run["times"]),
            "ratio": statistics.median(run["times"]) / reference,
            "teacher": (
                statistics.median(run["teacher_times"]) if detector_teachers(run["model"]) else None
            ),
            # Median over the profiled steps of (sync seconds, its share of that step).
            "sync": (
                (
                    statistics.median(s for s, _ in run["sync_shares"]),
                    statistics.median(s / step for s, step in run["sync_shares"]),
                )
                if run["sync_shares"]
                else None
            ),
        }
        for run in runs
    ], peak_memory_gb(device) * 1024


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", nargs="+", required=True)
    parser.add_argument("--height", type=int, default=576)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--batch", type=int, default=2, help="images per step")
    parser.add_argument("--persons", type=int, default=6, help="persons per image")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3, help="timed steps")
    parser.add_argument(
        "--precision",
        nargs="+",
        default=["fp32"],
        choices=list(AUTOCAST_DTYPES),
        help="autocast precisions, each stepped in turn with every config (fp16: GradScaler)",
    )
    parser.add_argument(
        "--num-gpus", type=int, default=1, help="processes (DDP), GPUs or CPU processes"
    )
    parser.add_argument("--seqnet-root", help="a checkout of serend1p1ty/SeqNet: step it too")
    parser.add_argument("--seqnet-device", default="cpu")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    if args.seqnet_root and args.num_gpus > 1:
        parser.error("--seqnet-root: SeqNet is stepped in one process only (no --num-gpus)")
    launch(print_table, args.num_gpus, dist_url="auto", args=(args,))


def print_table(args):
    rows, peak_mib = time_configs(args)
    if not comm.is_main_process():
        return
    world = comm.get_world_size()
    print(
        f"\nTraining step, batch {args.batch} of {args.width}x{args.height} synthetic images, "
        f"{args.persons} persons each; median (min) of {args.iters} steps after "
        f"{args.warmup} warm-up, configs stepped in turns in one process; torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads; peak memory of the process "
        f"{peak_mib:.0f} MiB"
        + (f"; {world} processes (DDP), the main one's times" if world > 1 else "")
        + "\n"
    )
    sync = " | OIM sync ms | OIM sync share" if world > 1 else ""
    print(
        "| config | precision | depth | device | ROIs/img | s/step median | s/step min "
        f"| x first row | teacher forward s median{sync} |"
    )
    print("|---|---|---|---|---|---|---|---|---|" + ("---|---|" if world > 1 else ""))
    for r in rows:
        teacher = "-" if r["teacher"] is None else f"{r['teacher']:.3f}"
        sync = ""
        if world > 1 and r["sync"] is None:
            sync = " - | - |"
        elif world > 1:
            sync = f" {1e3 * r['sync'][0]:.2f} | {100 * r['sync'][1]:.2f} % |"
        print(
            f"| {r['config']} | {r['precision']} | R{r['depth']} | {r['device']} | {r['rois']} | "
            f"{r['median']:.3f} | {r['min']:.3f} | {r['ratio']:.3f} | {teacher} |{sync}"
        )


if __name__ == "__main__":
    main()  # pragma: no cover
