"""Remote jobs over SSH, contained on the remote host by tether's own engine.

- :mod:`tether.remote.hostlist`: pdsh/clush host lists and ``[USER@]HOST[:PORT]``;
- :mod:`tether.remote.bootstrap`: the fixed ssh command and how the engine is
  shipped (zip over stdin, no install needed);
- :mod:`tether.remote.protocol`: frames between client and agent;
- :mod:`tether.remote.agent`: the remote supervisor (run, out-of-band cancel);
- :mod:`tether.remote.client`: connections, one host's job, out-of-band cancel;
- :mod:`tether.remote.fanout`: one job on many hosts, so many at a time.

Nothing here imports click or :mod:`tether.cli`: ``tether run --host/-w`` and
``tether cancel`` are :mod:`tether.cli.run` and :mod:`tether.cli.cancel`.
"""
