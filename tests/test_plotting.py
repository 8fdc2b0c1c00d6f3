import numpy as np
import pytest

from ctfm import plotting


def legend_texts(figure):
    return [text.get_text() for legend in figure.legends for text in legend.get_texts()]


def labelled_volume():
    volume = np.zeros((12, 24, 24), np.float32)
    labels = np.zeros(volume.shape, np.int64)
    labels[3:7, 5:10, 5:10] = 2
    labels[5:9, 12:20, 12:20] = 5
    return volume, labels


def test_segmentation_preview_names_each_class_present_in_its_colour():
    volume, labels = labelled_volume()
    names = ["background", "spleen", "kidney_right", "kidney_left", "gallbladder", "liver"]
    figure = plotting.segmentation_figure(volume, labels, class_names=names)
    assert legend_texts(figure) == ["kidney_right", "liver"]
    colours = plotting.class_colours([2, 5])
    patches = figure.legends[0].get_patches()
    np.testing.assert_allclose(patches[1].get_facecolor(), colours[5])
    # the label layer of the axial slice shows those colours where the classes are
    axial = figure.axes[0].get_images()[1].get_array()
    shown = np.asarray(axial)[labels[6] == 5]
    np.testing.assert_allclose(shown[0, :3], colours[5][:3])


def test_pseudo_label_preview_names_every_class_and_has_a_scale():
    volume, labels = labelled_volume()
    labels[labels == 5] = 1
    heat = np.random.default_rng(0).random(volume.shape).astype(np.float32)
    figure = plotting.pseudo_label_figure(volume, labels, heat, class_names=["background", "liver", "kidney_right"])
    assert legend_texts(figure) == ["liver", "kidney_right"]
    assert [axes.get_ylabel() for axes in figure.axes if axes.get_ylabel()] == ["normalised class similarity (0-1)"]


def test_a_heat_overlay_must_say_its_scale_and_noise_is_not_stretched(caplog):
    volume = np.zeros((6, 8, 8), np.float32)
    with pytest.raises(ValueError, match="colorbar_label"):
        plotting.slices_figure(volume, overlay=volume, overlay_kind="heat")
    noise = np.full(volume.shape, 0.3) + np.random.default_rng(0).random(volume.shape) * 4.8e-7
    assert plotting.heat_range(noise) == pytest.approx((noise.min(), noise.min() + plotting.NOISE_FLOOR))
    assert plotting.noise_checked_title("map", noise, "the map").endswith(plotting.NO_SIGNAL)
    assert "the map spans only" in caplog.text
    assert plotting.noise_checked_title("map", noise * 1e5, "the map") == "map"


def test_concept_slices_keep_the_anatomy_in_proportion(monkeypatch, tmp_path):
    figures = []
    monkeypatch.setattr(plotting, "save_figure", lambda figure, path, **_: figures.append(figure) or path)
    volume, rgb = np.zeros((10, 40, 50)), np.full((10, 40, 50, 3), 0.5)
    plotting.concept_pair([volume, volume], [rgb, rgb], tmp_path / "c.png", spacing=(3.0, 1.0, 1.0))
    aspects = [axes.get_aspect() for axes in figures[0].axes]
    assert aspects == [1.0, 3.0, 1.0, 3.0]  # axial (y, x) at 1 x 1 mm, coronal (z, x) at 3 x 1 mm
