import sys; from onnxlm.cli import main; sys.exit(main())
