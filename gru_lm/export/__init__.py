"""Taking a model out of gru-lm: a one-step ONNX graph (`gru-lm export --onnx`) and a static page that writes
in the browser with no server (`gru-lm export --web`), both built from a checkpoint's weights."""
