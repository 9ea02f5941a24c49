"""``python -m data_download TASK --data-dir DIR`` (see `data_download.downloader.main`)."""

import sys

from data_download.downloader import main

sys.exit(main())
