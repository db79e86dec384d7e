import csv,sys,statistics as st
rows=list(csv.DictReader(open(sys.argv[1])))
by={}
for r in rows: by.setdefault((r['scenario'],r['rep']),{})[r['tool']]=r
scs=sorted(set(r['scenario'] for r in rows),key=lambda x:[r['scenario'] for r in rows].index(x))
for sc in scs:
    out={}
    for (s,rep),d in sorted(by.items()):
        if s!=sc or 'tcpdump' not in d: continue
        t=d['tcpdump']
        for tool,r in d.items():
            if tool=='tcpdump': continue
            out.setdefault(tool,[]).append((float(r['cpu_s_per_mpkt'])/float(t['cpu_s_per_mpkt']), float(r['machine_s_per_mpkt'])/float(t['machine_s_per_mpkt']), float(r['capture_ratio']), r['loadavg'].split()[0], r['offered_pps'], float(r['cpu_s_per_mpkt'])))
    for tool,v in out.items():
        own=[x[0] for x in v]; mach=[x[1] for x in v]
        print(f"{sc:14s} {tool:12s} own {min(own):.2f}/{st.median(own):.2f}/{max(own):.2f} machine {min(mach):.2f}/{st.median(mach):.2f}/{max(mach):.2f} cap_min {min(x[2] for x in v):.4f} s/Mpkt {st.median(x[5] for x in v):.3f} load {','.join(x[3] for x in v)} kpps {','.join(str(int(x[4])//1000) for x in v)}")
    t=[float(d['tcpdump']['cpu_s_per_mpkt']) for (s,rep),d in by.items() if s==sc and 'tcpdump' in d]
    print(f"{sc:14s} tcpdump s/Mpkt median {st.median(t):.3f}")
