#!/usr/bin/env python3
# Every 0.5 s: host's thread CPU (ticks) and wchar per kind, WAL/DB sizes, /proc/vmstat deltas.
import os, re, time, collections
NET = ['TCPRcvQDrop','TCPBacklogDrop','TCPMemoryPressures','PruneCalled','RcvPruned','TCPTimeouts','TCPLossProbes','TCPAbortOnMemory','TCPOFODrop','RetransSegs','TCPZeroWindowDrop','TCPRcvCollapsed','TCPSpuriousRTOs','TCPLostRetransmit','InErrors','TCPMemoryPressuresChrono','TCPWantZeroWindowAdv','TCPToZeroWindowAdv','TCPFromZeroWindowAdv','ListenDrops','TCPReqQFullDrop']
KEYS = ['pgalloc_normal','pgfree','pgfault','pgmajfault','thp_fault_alloc','thp_file_alloc','compact_stall','compact_migrate_scanned','allocstall_normal','pgscan_kswapd','pgsteal_kswapd','nr_dirty','nr_writeback','nr_file_pages','nr_free_pages','balloon_inflate','balloon_deflate','pgactivate','pgdeactivate','workingset_refault_file','pgsteal_direct','nr_dirtied','nr_written','thp_split_page','zone_reclaim_failed','pgpromote_success','numa_hint_faults'] + NET
GAUGES = {'nr_dirty','nr_writeback','nr_file_pages','nr_free_pages'}
def host():
    for p in os.listdir('/proc'):
        if p.isdigit():
            try: c = open(f'/proc/{p}/cmdline','rb').read().split(b'\0')
            except Exception: continue
            if len(c) > 1 and c[0].endswith(b'securechat-bench') and c[1] == b'serve': return p
def files(pid):
    w = d = 0
    for fd in os.listdir(f'/proc/{pid}/fd'):
        try: t = os.readlink(f'/proc/{pid}/fd/{fd}')
        except Exception: continue
        if t.endswith('.db-wal'): w = os.path.getsize(t)
        elif t.endswith('.db'): d = os.path.getsize(t)
    return w, d
GAUGES = GAUGES | set()
def vm():
    d = {l.split()[0]: int(l.split()[1]) for l in open('/proc/vmstat')}
    for f in ('/proc/net/netstat','/proc/net/snmp'):
        lines = open(f).read().split('\n')
        for i in range(0, len(lines)-1, 2):
            k = lines[i].split(); v = lines[i+1].split()
            if len(k) == len(v) and k:
                for a,b in zip(k[1:], v[1:]):
                    try: d[a] = int(b)
                    except: pass
    return d
def threads(pid):
    out = {}
    for t in os.listdir(f'/proc/{pid}/task'):
        try:
            st = open(f'/proc/{pid}/task/{t}/stat').read()
            io = dict(l.split(': ') for l in open(f'/proc/{pid}/task/{t}/io').read().split('\n') if l)
        except Exception: continue
        name = st[st.index('(')+1:st.rindex(')')]; f = st[st.rindex(')')+2:].split()
        out[t] = (re.sub(r'-\d+$','',name), int(f[11])+int(f[12]), int(io['wchar']))
    return out
pid=None; lt={}; lv=vm()
while True:
    p = host()
    if p != pid: pid, lt = p, {}
    if not pid: time.sleep(0.2); lv=vm(); continue
    try: s = threads(pid); w,d = files(pid)
    except Exception: time.sleep(0.2); continue
    v = vm()
    agg = collections.defaultdict(lambda: [0,0])
    for t,(n,c,wc) in s.items():
        if t in lt: agg[n][0]+=c-lt[t][1]; agg[n][1]+=wc-lt[t][2]
    if lt:
        th = " ".join(f"{n[:6]}:{a[0]*2}%/{a[1]/1e6:.0f}MB" for n,a in sorted(agg.items()) if a[0] or a[1])
        vs = " ".join(f"{k}={(v.get(k,0) if k in GAUGES else v.get(k,0)-lv.get(k,0))}" for k in KEYS if (v.get(k,0) if k in GAUGES else v.get(k,0)-lv.get(k,0)))
        cg = ''
        try:
            path = [l.split(':',2)[2].strip() for l in open(f'/proc/{pid}/cgroup') if ':memory:' in l][0]
            base = '/sys/fs/cgroup/memory' + path
            st = dict(l.split() for l in open(base+'/memory.stat'))
            oom = open(base+'/memory.oom_control').read().replace('\n',' ')
            cg = f"usage={int(open(base+'/memory.usage_in_bytes').read())>>20} fail={open(base+'/memory.failcnt').read().strip()} cache={int(st['cache'])>>20} rss={int(st['rss'])>>20} dirty={int(st['dirty'])>>20} wb={int(st['writeback'])>>20} {oom}"
        except Exception as e: cg = str(e)[:40]
        print(f"{time.monotonic():.1f} wal={w>>20} db={d>>20} | {cg} | {th} | {vs}", flush=True)
    lt=s; lv=v
    time.sleep(0.5)
