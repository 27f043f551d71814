"""The llama.cpp boundary: the only package that imports llama_cpp. The engine (model + context + sampler), the GGUF
index through llama.cpp's parser, the log router and checked access to ggml structs live here; everything else in
lfmq talks to llama.cpp through them."""
