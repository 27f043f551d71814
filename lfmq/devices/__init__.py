"""Device profiles (data files in profiles/) and detection, predictions and their calibration, builds for a device
(toolchain, vendored llama.cpp, native runner), and devices as URIs (transports, a run on a device start to end)."""
