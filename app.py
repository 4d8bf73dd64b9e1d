"""The web page for restoring images: ``python app.py [-m MODEL ...] [--port N]`` (same as ``diffir-app``)."""
from diffir.app import main

if __name__ == "__main__":
    main()
