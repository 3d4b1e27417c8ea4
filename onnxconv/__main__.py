"""``python -m onnxconv`` runs the CLI."""

from onnxconv.cli import main

if __name__ == "__main__":
    main()
