"""The label map, explicit rather than alphabetical: REAL = 0, FAKE = 1, and FAKE is the positive class.

Kept free of heavy imports so that commands which only need the names (download, plot) stay light.
"""

CLASS_NAMES = ("REAL", "FAKE")
LABEL2ID = {name: index for index, name in enumerate(CLASS_NAMES)}
ID2LABEL = dict(enumerate(CLASS_NAMES))
POSITIVE_CLASS = "FAKE"
# Not a class: the verdict of a detector asked to abstain (--min-confidence, --check-stability) when it cannot
# stand behind REAL or FAKE. P(FAKE) is still reported with it.
UNSURE = "UNSURE"
