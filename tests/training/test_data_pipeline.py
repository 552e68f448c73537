"""The training data pipeline: two views per image and references drawn from the same class and view."""

import numpy as np


def test_drawn_references_share_class_and_view_and_exclude_self(realiad_root):
    from adpretrain_hf.modeling.image_processing_adpretrain import ADPretrainImageProcessor
    from adpretrain_hf.training.data_pipeline import build_training_data, collate_views, draw_references

    processor = ADPretrainImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    data = build_training_data(str(realiad_root), processor, seed=0)
    batch = collate_views([data.dataset[i] for i in range(4)])
    assert batch["view1"].shape == (4, 3, 64, 64) and batch["mask"].shape == (4, 64, 64)
    refs = draw_references(data, batch, np.random.default_rng(0), shot_choices=(4,))
    assert refs.shape == (4, 4)
    raw = data.raw
    for row, picked in zip(batch["row_index"].tolist(), refs.tolist()):
        assert row not in picked
        for index in picked:
            assert raw[index]["label"] == 0 and raw[index]["category"] == raw[row]["category"] and raw[index]["view"] == raw[row]["view"]
