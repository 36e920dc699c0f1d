"""The demo game played in a browser: its page, script and styles, and the vendored JS
client SDK, under ``static/`` (``static/sdk/`` is the build of ``clients/js``). The
brokerlist serves them at ``/game/`` (docs/game.md); there is no Python here.
"""
