"""A prompt's structure from its words: its parts and its colourless layout (known answers)."""

from staged_clip import structure
from toy import scenes, world


def test_a_scene_splits_into_its_objects_in_order():
    assert structure.parts("a red circle on the left and a blue square on the right") == (
        "a red circle on the left", "a blue square on the right")
    assert structure.parts("  a green triangle at the top  ") == ("a green triangle at the top",)
    assert structure.parts("a castle at dusk") == ("a castle at dusk",)


def test_every_scene_caption_splits_into_its_objects_captions():
    for scene in scenes.all_scenes()[::37]:
        assert structure.parts(scenes.caption(scene)) == tuple(scenes.caption((obj,)) for obj in scene)


def test_the_layout_takes_out_colours_and_fixes_articles():
    assert structure.layout("a red circle on the left and a blue square on the right") == (
        "a circle on the left and a square on the right")
    assert structure.layout("an orange triangle at the top and a black circle at the bottom") == (
        "a triangle at the top and a circle at the bottom")
    assert structure.layout("A red apple") == "An apple"
    assert structure.layout("a castle at dusk") == "a castle at dusk"  # no colour: its own layout


def test_the_world_colours_are_all_taken_out():
    assert set(world.COLOUR_NAMES) <= structure.COLOUR_WORDS
    for name in world.COLOUR_NAMES:
        assert name not in structure.layout(f"a {name} circle on the left").split()
