# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
from detectron2.config import CfgNode as CN

__all__ = [
    "add_crop_reid_config",
    "add_distillation_config",
    "add_dkd_config",
    "add_fd_config",
    "add_gallery_index_config",
    "add_kd_det_config",
    "add_oim_config",
    "add_personsearch_config",
    "add_qeeps_config",
    "add_reid_config",
    "add_search_config",
    "add_teacher",
    "check_distillation_config",
    "load_config",
    "student_config",
]


def add_personsearch_config(cfg):
    """
    Add every key of personsearch_kd to ``cfg``, method by method (each ``add_*_config`` below
    adds one method's keys and may be called alone). Call it on a fresh ``get_cfg()`` before
    ``merge_from_file``.
    """
    add_oim_config(cfg)
    add_reid_config(cfg)
    add_crop_reid_config(cfg)
    add_qeeps_config(cfg)
    add_distillation_config(cfg)
    add_kd_det_config(cfg)
    add_dkd_config(cfg)
    add_fd_config(cfg)
    add_search_config(cfg)
    add_gallery_index_config(cfg)


def add_oim_config(cfg):
    """The OIM identity branch and loss (Xiao et al., CVPR 2017)."""
    _C = cfg
    _C.MODEL.OIM = CN()
    # Dimension of the L2-normalised ID embedding (pooled res5 -> Linear -> BN -> L2).
    _C.MODEL.OIM.EMBED_DIM = 256
    # Number of labeled training identities = LUT rows; dataset person ids must lie in
    # [0, NUM_IDS) (-1 = unlabeled). CUHK-SYSU has 5532.
    _C.MODEL.OIM.NUM_IDS = 5532
    # Length of the circular queue of unlabeled-person features (5000 for CUHK-SYSU, 500 for PRW).
    _C.MODEL.OIM.QUEUE_SIZE = 5000
    # Inverse temperature applied to cosine similarities before the softmax (30 as in SeqNet/NAE;
    # the original Caffe OIM used 10).
    _C.MODEL.OIM.SCALAR = 30.0
    # LUT row update v <- m*v + (1-m)*x, then the row is re-normalised.
    _C.MODEL.OIM.MOMENTUM = 0.5
    # lambda_oim, the weight of the OIM loss in the total loss (0.1 in the KD_reid configs).
    _C.MODEL.OIM.LOSS_WEIGHT = 1.0
    # Keep the LUT fixed: it is never updated by training (KD_reid). The queue still updates.
    _C.MODEL.OIM.FREEZE_LUT = False


def add_reid_config(cfg):
    """The re-ID head and its losses (MODEL.REID), shared by every model."""
    _C = cfg
    _C.MODEL.REID = CN()
    # The re-ID head (REID_HEAD_REGISTRY): ROI feature maps -> embeddings (+ identity logits).
    _C.MODEL.REID.HEAD_NAME = "EmbeddingHead"
    # Give the re-ID head its own res5 on the pooled ROI features instead of the box head's (DKD's
    # separate detection and re-ID heads). It starts from res5's weights when the checkpoint has
    # none (ImageNet, model zoo, a shared-head model) and only runs on foreground ROIs in training.
    _C.MODEL.REID.SEPARATE_RES5 = False
    # Its losses (REID_LOSS_REGISTRY), summed: "OIMReIDLoss" (MODEL.OIM), "IdentityCrossEntropyLoss"
    # (MODEL.REID.ID_CE; gives the head a classifier), "TripletReIDLoss" (MODEL.REID.TRIPLET).
    _C.MODEL.REID.LOSSES = ["OIMReIDLoss"]
    _C.MODEL.REID.ID_CE = CN()
    # Weight of the identity cross-entropy, and its label smoothing (0.1 in re-ID baselines).
    _C.MODEL.REID.ID_CE.WEIGHT = 1.0
    _C.MODEL.REID.ID_CE.LABEL_SMOOTHING = 0.1
    _C.MODEL.REID.TRIPLET = CN()
    # Weight and margin of the batch-hard triplet loss on labeled boxes (0.3 in re-ID baselines).
    _C.MODEL.REID.TRIPLET.WEIGHT = 1.0
    _C.MODEL.REID.TRIPLET.MARGIN = 0.3


def add_crop_reid_config(cfg):
    """Re-ID networks on person crops (CropReIDNet) and their P x K loader."""
    _C = cfg
    _C.INPUT.REID_CROP = CN()
    # Re-ID networks on person crops (CropReIDNet): the crop size (H, W), 256 x 128 in re-ID.
    _C.INPUT.REID_CROP.SIZE = (256, 128)
    # Image-level spatial augmentation (ISA, DKD): alpha, pixels the box may grow on each side
    # (also the cap of the jitter), and Delta_p, the jitter in pixels of the crop (0 = no ISA).
    _C.INPUT.REID_CROP.EXPAND = 10.0
    _C.INPUT.REID_CROP.SHIFT = 0.0
    # Probability of erasing a random rectangle of a training crop (random erasing).
    _C.INPUT.REID_CROP.ERASE_PROB = 0.5
    # The rows of the box a crop shows: "holistic" (all), a partial view of factorized
    # distillation, "Up1" (rows 0-1/2 of the box), "Mid1" (1/4-3/4), "Dn1" (1/2-1), "Up2"
    # (0-3/7), "Mid2" (2/7-5/7), "Dn2" (4/7-1), or "TOP,BOTTOM" fractions of the box height.
    _C.INPUT.REID_CROP.VIEW = "holistic"
    # Train on ground-truth person crops of DATASETS.TRAIN in identity-balanced P x K batches
    # (CropReIDNet) instead of scene images; evaluation then searches the ground-truth boxes.
    _C.DATALOADER.PERSON_CROPS = False
    # K, the crops of each identity in a P x K batch (P = SOLVER.IMS_PER_BATCH / K per process).
    _C.DATALOADER.REID_INSTANCES_PER_ID = 4


def add_qeeps_config(cfg):
    """QEEPS (Munjal et al., CVPR 2019): query-guided person search on pairs."""
    _C = cfg
    # Train on query-gallery pairs (QEEPS): every ordered pair of two images of one labeled person.
    _C.DATALOADER.QUERY_PAIRS = False

    _C.MODEL.QEEPS = CN()
    # QEEPS (meta-architecture "QEEPS", docs/qeeps.md): the backbone stages whose residual blocks
    # exchange QSSE excitations between query and gallery, the excitation's bottleneck ratio, and
    # the IoU with the query's person at which QSimNet calls a gallery ROI the same person.
    _C.MODEL.QEEPS.QSSE_STAGES = ["res2", "res3", "res4"]
    _C.MODEL.QEEPS.QSSE_REDUCTION = 16
    _C.MODEL.QEEPS.SIM_IOU = 0.5


def add_distillation_config(cfg):
    """The Distiller: its student, teachers and distillation losses."""
    _C = cfg
    # Teachers, for training only (personsearch_kd/distillation/teachers.py; they need
    # MODEL.META_ARCHITECTURE "Distiller"), each under a name of your choice:
    # MODEL.TEACHERS.<name>.KIND (TEACHER_REGISTRY: "DetectorTeacher", "LUTFileTeacher",
    # "CropReIDTeacher"), .CONFIG_FILE, .WEIGHTS, .OPTS (KEY VALUE overrides of its config). Add
    # them in a YAML file or with personsearch_kd.add_teacher(cfg, name, kind, ...), which also
    # makes the config a Distiller's.
    _C.MODEL.TEACHERS = CN(new_allowed=True)
    _C.MODEL.DISTILLATION = CN()
    # With MODEL.META_ARCHITECTURE "Distiller": the plain student it trains ("PersonSearchRCNN",
    # "CropReIDNet", "QEEPS"). Evaluation, the predictor, the index and exports build this alone.
    _C.MODEL.DISTILLATION.STUDENT_ARCHITECTURE = "PersonSearchRCNN"
    # Distillation losses (DISTILL_LOSS_REGISTRY), each reading the student's training forward
    # and a teacher's outputs, e.g. the three of KD_det: "HintLoss", "RPNDistillLoss",
    # "RCNDistillLoss" (their keys are in MODEL.KD_DET).
    _C.MODEL.DISTILLATION.LOSSES = []


def add_kd_det_config(cfg):
    """KD_det (Munjal et al., BMVC 2019): the detector distillation losses' keys."""
    _C = cfg
    _C.MODEL.KD_DET = CN()
    # The name (in MODEL.TEACHERS) of the DetectorTeacher the KD_det losses compare with.
    _C.MODEL.KD_DET.TEACHER = "detector"
    # lambda_hint: weight of the hint loss, the mean over all B*C*H*W elements of the squared
    # difference between the 1x1-conv-adapted student map and the teacher's (0.5 in the seed paper,
    # whose ||V - Z||^2 is a sum: a mean keeps the weight independent of the map's size).
    _C.MODEL.KD_DET.HINT_WEIGHT = 0.5
    # The student's backbone output compared by the hint loss (the "BaseNet" output: res4 for C4)
    # and the teacher's ("" = the same name; e.g. "p4", stride 16 like res4, for an FPN teacher).
    _C.MODEL.KD_DET.HINT_FEATURE = "res4"
    _C.MODEL.KD_DET.HINT_TEACHER_FEATURE = ""
    # mu: weight of the ground-truth CE in RPN and RCN classification; 1 - mu weighs the soft CE
    # against the teacher.
    _C.MODEL.KD_DET.HARD_WEIGHT = 0.5
    # Temperature softening both networks' class probabilities in the soft CE (10 in the seed;
    # Chen et al. found T = 1 best for detection).
    _C.MODEL.KD_DET.TEMPERATURE = 10.0
    # Multiply the soft CE by T^2 (Hinton et al.): its gradient shrinks about as 1/T^2, so at T = 10
    # without it the teacher's classification signal is ~100x weaker than the hard CE's. Off by
    # default, as the seed paper writes the loss and as every result so far was trained.
    _C.MODEL.KD_DET.SOFT_T_SQUARED = False
    # Weight of the background class in the soft CE (1.5 after Chen et al.).
    _C.MODEL.KD_DET.BACKGROUND_WEIGHT = 1.5
    # gamma: weight of the teacher-bounded L2 regression loss added to the student's own box loss
    # (RPN and RCN; L1 with the SMOOTH_L1_BETA 0 of configs/Base-OIM-C4.yaml).
    _C.MODEL.KD_DET.BOUNDED_REG_WEIGHT = 0.5
    # m: the bounded loss counts where the student's squared error + m exceeds the teacher's.
    _C.MODEL.KD_DET.BOUNDED_REG_MARGIN = 0.0


def add_dkd_config(cfg):
    """DKD (Zhang et al., AAAI 2021): DKDLoss's keys."""
    _C = cfg
    _C.MODEL.DKD = CN()
    # DKDLoss: the name (in MODEL.TEACHERS) of its CropReIDTeacher, and the weights beta_p,
    # beta_pr, beta_tr of the probability, pair-wise relation and cross-model triplet terms
    # (not recovered from the paper: 1 each, tuned on the training split only), the triplet
    # margin m (0.3, a re-ID baseline's), and FSA: the probability term on jittered copies of the
    # boxes too (the same relative jitter for the student's ROI and the teacher's crop, in the
    # ISA range of INPUT.REID_CROP).
    _C.MODEL.DKD.TEACHER = "reid"
    _C.MODEL.DKD.PROB_WEIGHT = 1.0
    _C.MODEL.DKD.RELATION_WEIGHT = 1.0
    _C.MODEL.DKD.TRIPLET_WEIGHT = 1.0
    _C.MODEL.DKD.TRIPLET_MARGIN = 0.3
    _C.MODEL.DKD.FSA = True


def add_fd_config(cfg):
    """Factorized distillation (Ren & Li, arXiv 1811.08073): FactorizedDistillLoss's keys."""
    _C = cfg
    _C.MODEL.FD = CN()
    # FactorizedDistillLoss: the names (in MODEL.TEACHERS) of its CropReIDTeachers, one per
    # partial view, and the weights of its map and feature terms, each divided among the teachers
    # (not recovered from the paper: 1 each; 0 switches a term off).
    _C.MODEL.FD.TEACHERS = []
    _C.MODEL.FD.MAP_WEIGHT = 1.0
    _C.MODEL.FD.FEATURE_WEIGHT = 1.0


def add_search_config(cfg):
    """
    The person-search evaluation and inference options (TEST.PERSON_SEARCH), with the RPN's
    test-time objectness floor.
    """
    _C = cfg
    _C.TEST.PERSON_SEARCH = CN()
    # Gallery detections scoring below this are not searched (0.5 in the literature).
    _C.TEST.PERSON_SEARCH.SEARCH_SCORE_THRESH = 0.5
    # Detections scoring below this are not counted for detection AP / recall (0.01 as in SeqNet).
    _C.TEST.PERSON_SEARCH.DETECTION_SCORE_THRESH = 0.01
    # Draw the ranked top-VIS_TOPK matches of the first VIS_QUERIES queries into
    # <OUTPUT_DIR>/inference/<dataset>/ranked_matches/ at each evaluation (0 = none).
    _C.TEST.PERSON_SEARCH.VIS_QUERIES = 4
    _C.TEST.PERSON_SEARCH.VIS_TOPK = 5
    # Evaluate detection only (AP, recall), for plain detectors such as the DET teachers of
    # KD_det: the queries of the test sets are not run.
    _C.TEST.PERSON_SEARCH.DETECTION_ONLY = False
    # Search the ground-truth boxes of the gallery instead of detections, the re-ID quality alone
    # (always so for re-ID networks on crops, DATALOADER.PERSON_CROPS).
    _C.TEST.PERSON_SEARCH.GROUND_TRUTH_BOXES = False
    # Take each detection's re-ID feature from the detector's own res5 pass over its proposal
    # (the original OIM) instead of embedding the regressed box again (a second res5 pass).
    _C.TEST.PERSON_SEARCH.REID_ON_PROPOSALS = False
    # Inference precision of PersonSearchRCNN: "fp32", "bf16" / "fp16" autocast (the re-ID
    # features stay fp32), "auto", the fastest float precision the device computes natively
    # (bf16 on CPUs with AVX-512 BF16 or AMX, else fp32), or "int8" on a CPU: the backbone, the
    # RPN conv and res5 as int8 convolutions (modeling/int8.py). A precision the device would
    # emulate is an error: emulated bf16 ran ~250x slower than fp32 on an AVX2 CPU
    # (modeling/precision.py).
    _C.TEST.PERSON_SEARCH.PRECISION = "fp32"
    # int8: the first images the model runs, in fp32, set the ranges of its int8 activations.
    _C.TEST.PERSON_SEARCH.INT8_CALIBRATION_IMAGES = 16
    # Inference only (engine/trained_model.py; training never sees it): the model's tensors in
    # channels_last memory format (7-16 % faster on an AVX-512 CPU).
    _C.TEST.PERSON_SEARCH.CHANNELS_LAST = False
    # Images per inference batch in evaluation and indexing (gallery images and queries may
    # share a batch).
    _C.TEST.PERSON_SEARCH.IMS_PER_BATCH = 1
    # Test time, RecordingRPN: proposals whose objectness probability is below this are dropped
    # after NMS and POST_NMS_TOPK_TEST, so that res5 runs on fewer proposals where a frame has few
    # persons (0 = none dropped; speed and accuracy: docs/search.md).
    _C.MODEL.RPN.MIN_OBJECTNESS_TEST = 0.0


def add_gallery_index_config(cfg):
    """The persistent gallery index (personsearch_kd.search)."""
    _C = cfg
    _C.GALLERY_INDEX = CN()
    # The persistent gallery index (personsearch_kd.search, tools/index_gallery.py): a faiss
    # index_factory string with inner product, "Flat" (exact) or e.g. "HNSW32", "IVF4096,PQ32";
    # faiss search parameters ("nprobe=32", "efSearch=128"; "" = faiss's defaults); and, for
    # types that need training (IVF, PQ), the boxes buffered (searched exactly) before training.
    # Measured recommendations by gallery size: docs/search.md.
    _C.GALLERY_INDEX.FACTORY = "Flat"
    _C.GALLERY_INDEX.SEARCH_PARAMS = ""
    _C.GALLERY_INDEX.TRAIN_SIZE = 100000
    # Build and search the index on every GPU where faiss's GPU build is installed and the index
    # type has a GPU version (Flat, IVF); otherwise, and with False, on the CPU.
    _C.GALLERY_INDEX.GPU = True
    # Recall self-check of an approximate (non-Flat) index once it is built: the recall@10
    # against exact search to reach, measured on a sample of the index's own features; nprobe
    # (IVF) or efSearch (HNSW) is raised from SEARCH_PARAMS until it is reached (recorded in
    # index.json, docs/search.md). 0 turns the check off.
    _C.GALLERY_INDEX.TARGET_RECALL = 0.95
    # The most one query's search may take while raising it: p50 ms of GalleryIndex.search on one
    # CPU thread. 20 ms: under half of the 50 ms search target of docs/search.md and about 1 % of
    # embedding the query on a CPU (1-2 s per image); exact search of 1M boxes takes 86 ms.
    _C.GALLERY_INDEX.LATENCY_BUDGET_MS = 20.0
    # Video indexing: a frame in which under this share of the pixels (of a grey thumbnail 128 px
    # wide) changed by more than 16 grey levels since the last frame of its video the model ran
    # on takes that frame's detections without running the model (search/frame_gate.py; e.g.
    # 0.005 for a static camera); images are never gated. 0 turns it off. Measured recall and
    # speed: docs/search.md.
    _C.GALLERY_INDEX.UNCHANGED_FRAME_SHARE = 0.0


def load_config(config_file: str, opts=(), freeze: bool = True, overrides=()):
    """
    A detectron2 config with this project's keys: the defaults, then ``config_file``, then each
    override file of ``overrides`` in order (e.g. the hardware keys of configs/mot15/gpu.yaml, a
    tool's ``--override FILE``), then the KEY VALUE ``opts`` (e.g. a tool's trailing command-line
    arguments); frozen unless asked not. An override file holds keys only: one with ``_BASE_`` is
    an error.
    """
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_personsearch_config(cfg)
    cfg.merge_from_file(config_file)
    for override in overrides:
        _merge_override_file(cfg, override)
    cfg.merge_from_list(list(opts))
    check_distillation_config(cfg, config_file)
    if freeze:
        cfg.freeze()
    return cfg


def _merge_override_file(cfg, override_file: str) -> None:
    """
    Merge the keys of ``override_file`` into ``cfg`` (a config already merged from its file). An
    override changes keys of a config; it has no base of its own: ``_BASE_`` in it is an error.
    """
    import yaml
    from detectron2.utils.file_io import PathManager

    with PathManager.open(override_file, "r") as f:
        keys = yaml.safe_load(f) or {}
    if not isinstance(keys, dict):
        raise ValueError(f"override file {override_file}: expected KEY: VALUE mappings")
    if "_BASE_" in keys:
        raise ValueError(
            f"override file {override_file}: has _BASE_ {keys['_BASE_']!r}; an override holds "
            "keys only, merged after the config file (put the base in the config file)"
        )
    cfg.merge_from_other_cfg(type(cfg)(keys))


def check_distillation_config(cfg, where: str = "the config") -> None:
    """Teachers or distillation losses are trained only by a Distiller: never ignored silently."""
    distilling = len(cfg.MODEL.TEACHERS) > 0 or len(cfg.MODEL.DISTILLATION.LOSSES) > 0
    if distilling and cfg.MODEL.META_ARCHITECTURE != "Distiller":
        raise ValueError(
            f"{where}: MODEL.TEACHERS / MODEL.DISTILLATION.LOSSES are set but "
            f"MODEL.META_ARCHITECTURE is {cfg.MODEL.META_ARCHITECTURE!r}; expected 'Distiller' "
            f"(with MODEL.DISTILLATION.STUDENT_ARCHITECTURE {cfg.MODEL.META_ARCHITECTURE!r})"
        )


def add_teacher(cfg, name: str, kind: str, weights: str, config_file: str = "", opts=()):
    """
    Add the teacher ``MODEL.TEACHERS.<name>`` to ``cfg`` (as a YAML block would): ``kind`` from
    TEACHER_REGISTRY, its ``weights`` (a checkpoint, or a LUT file for "LUTFileTeacher"), its own
    ``config_file`` and KEY VALUE ``opts`` overrides of that config. A config that is not yet a
    Distiller's becomes one, its meta-architecture the student's.
    """
    if cfg.MODEL.META_ARCHITECTURE != "Distiller":
        cfg.MODEL.DISTILLATION.STUDENT_ARCHITECTURE = cfg.MODEL.META_ARCHITECTURE
        cfg.MODEL.META_ARCHITECTURE = "Distiller"
    cfg.MODEL.TEACHERS[name] = CN(
        {"KIND": kind, "CONFIG_FILE": config_file, "WEIGHTS": weights, "OPTS": list(opts)}
    )
    return cfg


def student_config(cfg):
    """
    A copy of ``cfg`` whose meta-architecture is its plain student (a Distiller's
    MODEL.DISTILLATION.STUDENT_ARCHITECTURE), for inference and exports: no teacher is built.
    """
    frozen = cfg.is_frozen()
    cfg = cfg.clone()
    cfg.defrost()
    if cfg.MODEL.META_ARCHITECTURE == "Distiller":
        cfg.MODEL.META_ARCHITECTURE = cfg.MODEL.DISTILLATION.STUDENT_ARCHITECTURE
    if frozen:
        cfg.freeze()
    return cfg
