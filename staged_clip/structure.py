"""A prompt's structure, read from its words, for schedules that aim early stages at part of it:
its parts (the objects a scene prompt names, split at the fixed grammar's " and ") and its
layout (the prompt with its colour words taken out: "a circle on the left and a square on the
right"). Both work on any prompt: one without " and " is its own only part, and one without
colour words is its own layout.
"""

import re

JOIN = " and "  # the scene grammar's joint (toy/scenes.py uses it): "a red circle on the left and a blue ..."
# colour words taken out of a layout: the drawn world's eight and the common others
COLOUR_WORDS = frozenset("""red green blue yellow purple orange white black pink brown grey gray cyan magenta
violet indigo turquoise teal gold golden silver beige maroon navy olive lime crimson scarlet""".split())
VOWEL_SOUND = re.compile(r"[aeiou]", re.IGNORECASE)


def parts(text):
    """The objects a prompt names, in order: ("a red circle on the left", "a blue square on the
    right") for a scene; (text,) for a prompt with no " and "."""
    return tuple(part.strip() for part in text.strip().split(JOIN) if part.strip())


def layout(text):
    """The prompt without its colour words, each article fixed to the word it now stands before
    ("an orange triangle at the top" -> "a triangle at the top")."""
    words = [w for w in text.strip().split() if w.lower() not in COLOUR_WORDS]
    for i, word in enumerate(words[:-1]):
        if word.lower() in ("a", "an"):
            fitting = "an" if VOWEL_SOUND.match(words[i + 1]) else "a"
            words[i] = fitting if word.islower() else fitting.capitalize()
    return " ".join(words)
