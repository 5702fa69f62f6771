"""Images and sequences with known geometry, for tests, benchmarks and the demo.

`planar`: a camera moving over a real photograph (exact homographies); `lowtexture`: the
same photographs degraded (blur, low contrast, fog, darkness, motion blur, blank wall,
repetitive texture); `scene`: a rendered 3D scene with poses and depth (VO, stereo).

Nothing here is used by the engine at run time. It imports numpy and OpenCV only (and
scikit-image's photographs).
"""
