"""Join a calibration's timeline (calibrate --timeline) with an nvidia-smi clock log sampled every 10 ms:
the SM clock and board power each kernel was timed at, by kernel family and alone rate.

    python benchmarks/clock_join.py benchmarks/data/h200-run11
(the folder holds clocks_power_10ms.csv and clock_alone/{timeline,gemm,attention}.csv)
"""
import csv
import datetime as dt
import numpy as np
import sys
D=sys.argv[1]
smi=[]
for r in list(csv.reader(open(f'{D}/clocks_power_10ms.csv')))[1:]:
    if len(r)<4: continue
    t=dt.datetime.strptime(r[0].strip(),'%Y/%m/%d %H:%M:%S.%f').replace(tzinfo=dt.UTC).timestamp()
    smi.append((t,float(r[1].split()[0]),float(r[2].split()[0])))
smi=np.array(smi)
tl=list(csv.DictReader(open(f'{D}/clock_alone/timeline.csv')))
rows={f:list(csv.DictReader(open(f'{D}/clock_alone/{f}.csv'))) for f in ('gemm','attention')}
out=[]
for t in tl:
    s,e=float(t['start_unix_s']),float(t['end_unix_s'])
    m=(smi[:,0]>=s)&(smi[:,0]<=e)
    if m.sum()<2: continue
    r=rows[t['family']][int(t['row'])]
    ms=float(r['median_ms'])
    if t['family']=='gemm': fl=2*int(r['m'])*int(r['n'])*int(r['k'])
    else:
        b,h,hd,q,kv=int(r['batch']),int(r['heads']),int(r['head_dim']),int(r['q_len']),int(r['kv_len'])
        fl=4*b*h*hd*q*kv*(0.5 if r['causal'] in ('True','true','1') and q==kv else 1)
    out.append((t['family'], fl/ms/1e9, np.median(smi[m,1]), np.median(smi[m,2]), ms))
o=np.array([(x[1],x[2],x[3],x[4]) for x in out]); fam=np.array([x[0] for x in out])
print('cases with >=2 clock samples:',len(out))
for f in ('gemm','attention'):
    for lo,hi in [(0,200),(200,400),(400,550),(550,650),(650,750),(750,2000)]:
        m=(fam==f)&(o[:,0]>=lo)&(o[:,0]<hi)
        if m.sum(): print(f"{f:9s} {lo:4d}-{hi:<4d} TFLOP/s n={m.sum():3d} clock median {np.median(o[m,1]):6.0f} MHz  power {np.median(o[m,2]):5.0f} W")
