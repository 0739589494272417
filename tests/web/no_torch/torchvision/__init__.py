# Put first on the live site's PYTHONPATH (tests/web/livesite.py): the web image installs no torchvision,
# so any import of it in the site, the API or the PACS worker must fail the live tests here too.
raise ImportError("torchvision is not installed in the serving tier (tests/web/no_torch)")
