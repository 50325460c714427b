# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
from detectron2.config import CfgNode as CN

__all__ = ["add_personsearch_config", "student_config"]

# Meta-architectures that train with a teacher, and the architecture of their student alone.
_STUDENT_ARCHITECTURE = {"DistillationRCNN": "PersonSearchRCNN"}


def add_personsearch_config(cfg):
    """
    Add config for personsearch_kd: the OIM identity branch and loss, the KD_det teacher and
    losses, the person-search evaluation.
    Call it on a fresh ``get_cfg()`` before ``merge_from_file``.
    """
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
    # KD_reid: a teacher's LUT file (tools/export_lut.py; format in personsearch_kd/layers/
    # lut_file.py), checked against DATASETS.TRAIN, NUM_IDS and EMBED_DIM and copied into the LUT
    # when the model is built; weights loaded later (MODEL.WEIGHTS, --resume) that contain a LUT
    # take precedence, so a resumed run keeps its own table.
    _C.MODEL.OIM.LUT_FILE = ""

    _C.MODEL.TEACHER = CN()
    # KD_det (meta-architecture DistillationRCNN): the frozen teacher detector, built from its
    # own config (its own pixel mean/std, input format, backbone), e.g.
    # configs/mot15/det_R_50_C4_cpu.yaml.
    _C.MODEL.TEACHER.CONFIG_FILE = ""
    # The teacher's trained checkpoint, loaded with DetectionCheckpointer (required).
    _C.MODEL.TEACHER.WEIGHTS = ""
    # KEY VALUE overrides of the teacher's config (MODEL.DEVICE always follows the student's).
    _C.MODEL.TEACHER.OPTS = []

    _C.MODEL.KD_DET = CN()
    # lambda_hint: weight of the L2 hint loss between the 1x1-conv-adapted student feature and the
    # teacher's (0.5 in the seed paper).
    _C.MODEL.KD_DET.HINT_WEIGHT = 0.5
    # The backbone output compared by the hint loss (the "BaseNet" output: res4 for C4).
    _C.MODEL.KD_DET.HINT_FEATURE = "res4"
    # mu: weight of the ground-truth CE in RPN and RCN classification; 1 - mu weighs the soft CE
    # against the teacher.
    _C.MODEL.KD_DET.HARD_WEIGHT = 0.5
    # Temperature softening both networks' class probabilities in the soft CE (10 in the seed).
    _C.MODEL.KD_DET.TEMPERATURE = 10.0
    # Weight of the background class in the soft CE (1.5 after Chen et al.).
    _C.MODEL.KD_DET.BACKGROUND_WEIGHT = 1.5
    # gamma: weight of the teacher-bounded L2 regression loss added to smooth L1 (RPN and RCN).
    _C.MODEL.KD_DET.BOUNDED_REG_WEIGHT = 0.5
    # m: the bounded loss counts where the student's squared error + m exceeds the teacher's.
    _C.MODEL.KD_DET.BOUNDED_REG_MARGIN = 0.0

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


def student_config(cfg):
    """
    The config of the student alone, for inference (``--eval-only``, the predictor, the search
    demo, exports): a copy of ``cfg`` that builds no teacher and reads no LUT file. Teachers are
    for training only; the student's checkpoint holds everything inference needs (its LUT
    included), so their files may be gone. Loading a distillation checkpoint into it logs the
    unused training-only keys (the KD_det hint adapter).
    """
    frozen = cfg.is_frozen()
    cfg = cfg.clone()
    cfg.defrost()
    arch = cfg.MODEL.META_ARCHITECTURE
    cfg.MODEL.META_ARCHITECTURE = _STUDENT_ARCHITECTURE.get(arch, arch)
    cfg.MODEL.TEACHER.CONFIG_FILE = ""
    cfg.MODEL.TEACHER.WEIGHTS = ""
    cfg.MODEL.OIM.LUT_FILE = ""
    if frozen:
        cfg.freeze()
    return cfg
