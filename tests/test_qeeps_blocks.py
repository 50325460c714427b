# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""QEEPS's query-guidance blocks (QSSE, QSimNet, QRPN and QSimNet labels) and its training pairs."""

import itertools

import pytest
import torch

from personsearch_kd.layers.qeeps import (
    QSSE,
    QuerySimilarityNet,
    query_anchor_labels,
    query_proposal_labels,
)


def test_qsse_applies_one_excitation_from_both_branches_to_both():
    torch.manual_seed(0)
    qsse = QSSE(32, reduction=4)
    query, gallery = torch.randn(3, 32, 5, 4), torch.randn(3, 32, 9, 12)  # other image sizes
    out_query, out_gallery = qsse(query, gallery)
    assert out_query.shape == query.shape and out_gallery.shape == gallery.shape
    scale_query = (out_query / query).mean(dim=(2, 3))
    scale_gallery = (out_gallery / gallery).mean(dim=(2, 3))
    assert torch.allclose(scale_query, scale_gallery, atol=1e-5)  # the same (N, C) excitation
    assert ((scale_query > 0) & (scale_query < 1)).all()
    per_channel = scale_query[:, :, None, None].expand_as(query)
    assert torch.allclose(out_query / query, per_channel, atol=1e-5)
    # Each branch guides the other: another gallery image changes the query's re-weighting.
    other_query, _ = qsse(query, torch.randn(3, 32, 9, 12))
    assert not torch.allclose(other_query, out_query)
    out_query.sum().backward()
    assert qsse.squeeze.weight.grad.abs().sum() > 0


def test_qsimnet_scores_pairs_from_their_squared_difference():
    torch.manual_seed(0)
    net = QuerySimilarityNet(8).eval()
    query = torch.nn.functional.normalize(torch.randn(8), dim=0)
    proposals = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    logits = net(query, proposals)
    assert logits.shape == (5, 2)
    # One query for all proposals equals the query repeated per proposal.
    assert torch.allclose(logits, net(query.expand(5, 8), proposals))
    # The score depends only on (p - q)^2: a proposal mirrored around the query scores the same.
    mirrored = 2 * query - proposals
    assert torch.allclose(net(query, mirrored), logits, atol=1e-6)
    similarity = net.similarity(query, proposals)
    assert torch.allclose(similarity, torch.softmax(logits, 1)[:, 1])


def test_qrpn_labels_are_positive_only_on_the_querys_person():
    # Anchors 0-1 on the query's person, 2-3 on another person (IoU 0 with the query's person),
    # 4 in between; 5 the best but still low-quality match when no anchor reaches 0.7.
    iou = torch.tensor([0.8, 0.75, 0.0, 0.0, 0.5, 0.1])
    assert query_anchor_labels(iou).tolist() == [1, 1, 0, 0, -1, 0]
    small_person = torch.tensor([0.45, 0.2, 0.45, 0.0])
    assert query_anchor_labels(small_person).tolist() == [1, 0, 1, 0]
    assert query_anchor_labels(torch.zeros(3)).tolist() == [0, 0, 0]
    assert query_proposal_labels(torch.tensor([0.5, 0.49, 0.9, 0.0])).tolist() == [1, 0, 1, 0]


def test_pairs_cover_every_ordered_pair_of_images_of_each_person():
    pytest.importorskip("detectron2")
    from personsearch_kd.data.query_pairs import query_gallery_pairs

    def record(pids):
        return {"annotations": [{"person_id": p} for p in pids]}

    # Person 0 in images 0, 1, 3; person 1 in 1, 2; person 2 in 3 only; -1 unlabeled; 4 a query.
    dicts = [record([0, -1]), record([0, 1]), record([1, -1, -1]), record([2, 0]),
             {"query_boxes": [[0, 0, 1, 1]], "annotations": [{"person_id": 0}]}]  # fmt: skip
    pairs = query_gallery_pairs(dicts)
    expected = [(q, g, 0) for q, g in itertools.permutations([0, 1, 3], 2)]
    expected += [(q, g, 1) for q, g in itertools.permutations([1, 2], 2)]
    assert pairs == expected  # N(N-1) per person: 6 + 2; a person seen once gives none


def test_the_pair_loader_maps_both_images_with_the_person_in_each(tiny_sets):
    pytest.importorskip("detectron2")
    from helpers import PERSONS, tiny_cfg

    from personsearch_kd.data.query_pairs import build_query_pair_train_loader

    cfg = tiny_cfg(18, **{"SOLVER.IMS_PER_BATCH": 2})
    cfg.DATASETS.TRAIN = (f"{tiny_sets}_train",)
    batch = next(iter(build_query_pair_train_loader(cfg)))
    assert len(batch) == 2
    for pair in batch:
        assert pair["person_id"] in {p for pids in PERSONS for p in pids if p >= 0}
        for key in ("query", "gallery"):
            assert pair[key]["image"].shape[0] == 3
            assert (pair[key]["instances"].gt_pids == pair["person_id"]).any()
        assert pair["query"]["file_name"] != pair["gallery"]["file_name"]


def _qeeps_cfg(tiny_sets, **overrides):
    from helpers import tiny_cfg

    cfg = tiny_cfg(18, **{"MODEL.META_ARCHITECTURE": "QEEPS", "SOLVER.IMS_PER_BATCH": 2,
                          "DATALOADER.QUERY_PAIRS": True, **overrides})  # fmt: skip
    cfg.DATASETS.TRAIN = (f"{tiny_sets}_train",)
    return cfg


def test_qeeps_trains_on_pairs_with_its_own_losses_and_starts_from_an_oim_checkpoint(
    tiny_sets, tmp_path
):
    pytest.importorskip("detectron2")
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage
    from helpers import set_seed, tiny_cfg

    from personsearch_kd.data import build_query_pair_train_loader

    set_seed(0)
    oim = build_model(tiny_cfg(18))
    DetectionCheckpointer(oim, save_dir=str(tmp_path)).save("oim")
    cfg = _qeeps_cfg(tiny_sets, **{"MODEL.WEIGHTS": str(tmp_path / "oim.pth")})
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    # Everything of the OIM model carries over; the QRPN starts as a copy of its RPN.
    oim_state, state = oim.state_dict(), model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in oim_state.items())
    for key, value in oim_state.items():
        if key.startswith("proposal_generator."):
            assert torch.equal(state["qrpn." + key[len("proposal_generator.") :]], value), key
    # The query guidance starts close to the identity.
    scale = torch.sigmoid(model.qsse.blocks["res3_0"].excite.bias)
    assert ((scale > 0.9) & (scale < 1)).all()

    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    batches = iter(build_query_pair_train_loader(cfg))
    with EventStorage():
        for _ in range(2):
            losses = model(next(batches))
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
    for key in ("loss_rpn_cls", "loss_qrpn_cls", "loss_qrpn_loc", "loss_cls", "loss_box_reg",
                "loss_oim", "loss_qsim"):  # fmt: skip
        assert key in losses and torch.isfinite(losses[key]), key
    assert model.qsse.blocks["res4_0"].squeeze.weight.grad.abs().sum() > 0
    assert model.qsimnet.classify.weight.grad.abs().sum() > 0
    assert model.query_modulation[0].weight.grad.abs().sum() > 0


def test_qeeps_searches_a_pair_and_refuses_plain_inference(tiny_sets, native_bf16):
    pytest.importorskip("detectron2")
    from detectron2.data import DatasetCatalog
    from detectron2.modeling import build_model
    from helpers import model_inputs, set_seed

    from personsearch_kd.engine import Trainer

    set_seed(0)
    cfg = _qeeps_cfg(tiny_sets)
    model = build_model(cfg).eval()
    records = DatasetCatalog.get(f"{tiny_sets}_train")
    query, gallery = model_inputs(cfg, records[:2], is_train=False)
    query["query_boxes"] = [records[0]["annotations"][0]["bbox"]]
    (result,) = model.search_pair([query], [gallery])
    found = result["instances"]
    assert found.image_size == (records[1]["height"], records[1]["width"]) and len(found) > 0
    assert ((found.query_similarity >= 0) & (found.query_similarity <= 1)).all()
    assert torch.allclose(found.reid_feats.norm(dim=1), torch.ones(len(found)), atol=1e-4)
    assert result["query_feat"].shape == (cfg.MODEL.OIM.EMBED_DIM,)
    # TEST.PERSON_SEARCH.PRECISION bf16: the pair passes run under autocast (other numbers, near
    # the fp32 ones) and the outputs stay fp32.
    bf16 = cfg.clone()
    bf16.TEST.PERSON_SEARCH.PRECISION = "bf16"
    low_precision = build_model(bf16).eval()
    low_precision.load_state_dict(model.state_dict())
    (low,) = low_precision.search_pair([query], [gallery])
    outputs = low["instances"].get_fields()
    for name in ("scores", "query_similarity", "reid_feats"):
        assert outputs[name].dtype == torch.float32, name
    assert outputs["pred_boxes"].tensor.dtype == low["query_feat"].dtype == torch.float32
    assert not torch.equal(low["query_feat"], result["query_feat"])
    assert float(low["query_feat"] @ result["query_feat"]) > 0.95
    # Once trained (here: perturbed away from its identity start), QSSE conditions each branch
    # on the other: the same query box in another pair gets another feature.
    for qsse in model.qsse.blocks.values():
        torch.nn.init.normal_(qsse.excite.weight, std=0.5)
    (first,) = model.search_pair([query], [gallery])
    (other_pair,) = model.search_pair([query], [model_inputs(cfg, records[2:3], False)[0]])
    assert not torch.allclose(first["query_feat"], other_pair["query_feat"], atol=1e-4)
    with pytest.raises(NotImplementedError, match="search_pair"):
        model([gallery])
    # The Trainer's test evaluates a query-guided model pair by pair, in percent.
    cfg.DATASETS.TEST = (f"{tiny_sets}_test",)
    cfg.TEST.PERSON_SEARCH.SEARCH_SCORE_THRESH = 0.0
    model.train()
    results = Trainer.test(cfg, model)["person_search"]
    assert set(results) == {"mAP", "top1", "top5", "top10", "det_AP", "det_recall"}
    assert 0 <= results["mAP"] <= 100 and 0 <= results["det_AP"] <= 100
    assert model.training  # restored after the evaluation


def test_evaluate_pairs_runs_a_qeeps_checkpoint_on_every_pair_and_on_a_prefiltered_gallery(
    tiny_sets, tmp_path, capsys
):
    pytest.importorskip("detectron2")
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model
    from helpers import cli_error, load_tool, set_seed, tiny_cfg

    set_seed(0)
    cfg = _qeeps_cfg(tiny_sets)
    cfg.DATASETS.TEST = (f"{tiny_sets}_test",)
    cfg.TEST.PERSON_SEARCH.SEARCH_SCORE_THRESH = 0.0
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("qeeps")
    (tmp_path / "qeeps.yaml").write_text(cfg.dump())
    oim = tiny_cfg(18)
    DetectionCheckpointer(build_model(oim), save_dir=str(tmp_path)).save("oim")
    (tmp_path / "oim.yaml").write_text(oim.dump())
    # QEEPS as a KD_reid teacher: its checkpoint's OIM table exports like OIM's.
    load_tool("export_lut").main(
        ["--config-file", str(tmp_path / "qeeps.yaml"), "--from-checkpoint", "--weights",
         str(tmp_path / "qeeps.pth"), "--output", str(tmp_path / "lut.pth")]
    )  # fmt: skip
    from personsearch_kd.layers import load_lut_file

    saved = torch.load(str(tmp_path / "qeeps.pth"), weights_only=False)["model"]
    table = load_lut_file(str(tmp_path / "lut.pth"))["lut"]
    assert table.shape == (cfg.MODEL.OIM.NUM_IDS, cfg.MODEL.OIM.EMBED_DIM)
    assert torch.equal(table, torch.as_tensor(saved["roi_heads.oim_loss.lut"]))
    common = ["--config-file", str(tmp_path / "qeeps.yaml"), "--weights",
              str(tmp_path / "qeeps.pth"), "--score", "query_similarity", "cosine"]  # fmt: skip
    cached = ["--cache-dir", str(tmp_path / "pairs")]
    results = load_tool("evaluate_pairs").main(common + cached)
    assert set(results) == {(cfg.DATASETS.TEST[0], s) for s in ("query_similarity", "cosine")}
    # Run again with its cache: no pair is run, the results are the same; another batch size
    # (another padding) is refused.
    again = load_tool("evaluate_pairs").main(common + cached)
    for pair_score, r in again.items():
        assert r["pairs_run"] == 0 and r["per_query"] == results[pair_score]["per_query"]
    with pytest.raises(ValueError, match="another evaluation.*batch_size"):
        load_tool("evaluate_pairs").main(common + cached + ["--batch-size", "2"])
    for r in results.values():
        assert 0 <= r["mAP"] <= 1 and len(r["per_query"]) == 1 and 0 <= r["det_AP"] <= 1
        assert r["per_query"][0]["count_gt"] >= 1
    # The query's gallery holds 2 images; the pre-filter keeps 1 of them.
    oim_files = [str(tmp_path / "oim.yaml"), str(tmp_path / "oim.pth")]
    one = load_tool("evaluate_pairs").main(
        common + ["--top-n", "1", "--prefilter-config", oim_files[0],
                  "--prefilter-weights", oim_files[1], "--baseline-config", oim_files[0],
                  "--baseline-weights", oim_files[1]]
    )  # fmt: skip
    from personsearch_kd.engine.pair_evaluation import BASELINE, PREFILTER

    name = cfg.DATASETS.TEST[0]
    # Beside the pair scores, the pre-filter's own search of the same kept image, and a second
    # query-agnostic model's (here the same model: the same images give the same search).
    agnostic = (PREFILTER, BASELINE)
    assert set(one) == {(name, s) for s in ("query_similarity", "cosine") + agnostic}
    assert one[(name, BASELINE)]["per_query"] == one[(name, PREFILTER)]["per_query"]
    for score, r in one.items():
        ranked_images = {image_id for image_id, *_ in r["per_query"][0]["ranked"]}
        assert len(ranked_images) <= 1 and r["per_query"][0]["count_gt"] >= 1
        assert score[1] in agnostic or r["pairs"] == 1
    lonely = common + ["--baseline-config", oim_files[0]]
    assert "go together" in cli_error(capsys, load_tool("evaluate_pairs").main, lonely)
    assert {i for i, *_ in results[(cfg.DATASETS.TEST[0], "cosine")]["per_query"][0]["ranked"]}
