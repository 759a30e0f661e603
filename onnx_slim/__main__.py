from onnx_slim.cli import main

main()
