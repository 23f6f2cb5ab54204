"""Image files, box files, crops with box coverage, and the generated context-bias data set.

Modules: `images` (decoding), `boxes` (the box index), `crops` (crop sampling and coverage),
`imagenet` (the training/eval Dataset), `generated` (the embedded synthetic data set).
"""
