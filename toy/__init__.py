"""The offline models' world and training: python3 -m toy train|zero-shot|guided.

world: the drawn shapes and their captions; training: the contrastive training of a
small clip.model.CLIP on them; measure: zero-shot accuracy and what it guides; cli: the
command line.
"""
