"""Storage comparison for the local list store: diskcache vs stdlib sqlite3.

Generates realistic records (canonical JSON: Chinese names, courts, case numbers,
obligations), sealed as site format 2 publishes them (decision 0011; the lookup key is the
identifier's 4-byte tag), and measures,
for each candidate:

* bulk load of N records (default 1,000,000),
* point lookups by identifier key (hit and miss, microseconds per call),
* batch screening throughput (keys/s) for the SQLite store,
* bytes on disk per entry.

Run::

    /work/venv/bin/python benchmarks/storage_compare.py            # 1M records
    /work/venv/bin/python benchmarks/storage_compare.py -n 200000  # quicker

The figures in docs/decisions/0001-storage-sqlite.md come from this script.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from intercept_sdk._protocol import sealing

HASH_KEY = bytes(range(32))

_SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈"
    "姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤"
)
_GIVEN = (
    "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英华建国建华志强文斌海燕红梅玉兰淑珍桂兰国华"
    "晓东春梅丽娟俊峰志刚永强德华金凤凤英红霞宏伟海波秀珍晓红立新建军建平东升鹏飞雪梅子豪浩然宇航欣怡"
)
_PROVINCES = (
    ("冀", "河北省", ("唐山市", "石家庄市", "保定市", "邯郸市", "沧州市", "廊坊市", "邢台市")),
    ("京", "北京市", ("北京市",)),
    ("津", "天津市", ("天津市",)),
    ("鲁", "山东省", ("济南市", "青岛市", "临沂市", "潍坊市", "烟台市", "济宁市")),
    ("豫", "河南省", ("郑州市", "洛阳市", "南阳市", "新乡市", "商丘市")),
    ("苏", "江苏省", ("南京市", "苏州市", "无锡市", "徐州市", "常州市")),
    ("浙", "浙江省", ("杭州市", "宁波市", "温州市", "金华市", "台州市")),
    ("粤", "广东省", ("广州市", "深圳市", "东莞市", "佛山市", "汕头市")),
    ("川", "四川省", ("成都市", "绵阳市", "南充市", "宜宾市")),
    ("湘", "湖南省", ("长沙市", "株洲市", "衡阳市", "岳阳市", "常德市", "邵阳市")),
    ("鄂", "湖北省", ("武汉市", "宜昌市", "襄阳市", "荆州市", "黄冈市", "十堰市")),
    ("皖", "安徽省", ("合肥市", "芜湖市", "蚌埠市", "阜阳市", "安庆市")),
    ("闽", "福建省", ("福州市", "厦门市", "泉州市", "漳州市", "莆田市")),
    ("赣", "江西省", ("南昌市", "赣州市", "九江市", "上饶市")),
    ("辽", "辽宁省", ("沈阳市", "大连市", "鞍山市", "锦州市")),
    ("黑", "黑龙江省", ("哈尔滨市", "齐齐哈尔市", "大庆市", "牡丹江市")),
    ("晋", "山西省", ("太原市", "大同市", "运城市", "长治市")),
    ("陕", "陕西省", ("西安市", "宝鸡市", "咸阳市", "榆林市")),
    ("桂", "广西壮族自治区", ("南宁市", "柳州市", "桂林市", "玉林市")),
    ("云", "云南省", ("昆明市", "曲靖市", "大理白族自治州", "红河哈尼族彝族自治州")),
    ("贵", "贵州省", ("贵阳市", "遵义市", "毕节市", "黔东南苗族侗族自治州")),
    ("渝", "重庆市", ("重庆市",)),
    ("沪", "上海市", ("上海市",)),
)
_DISTRICTS = (
    "路南区",
    "路北区",
    "丰润区",
    "开平区",
    "长安区",
    "桥西区",
    "新华区",
    "裕华区",
    "市中区",
    "历下区",
    "天河区",
    "越秀区",
    "鼓楼区",
    "玄武区",
    "西湖区",
    "武侯区",
    "雨花区",
    "城关区",
    "高新区",
    "经济开发区",
    "迁安市",
    "遵化市",
    "滦州市",
    "平山县",
    "正定县",
    "滦南县",
    "江北区",
    "江岸区",
    "洪山区",
    "雁塔区",
    "碑林区",
    "金水区",
    "二七区",
    "中原区",
    "姑苏区",
    "吴中区",
    "昆山市",
    "江阴市",
    "义乌市",
    "瑞安市",
    "南海区",
    "顺德区",
    "宝安区",
    "龙岗区",
    "福田区",
    "思明区",
    "晋江市",
    "青山湖区",
    "芙蓉区",
    "岳麓区",
    "和平区",
    "沈河区",
    "道里区",
    "南岗区",
    "小店区",
    "蜀山区",
    "庐阳区",
    "五华区",
    "南明区",
    "兴宁区",
    "渝中区",
    "浦东新区",
    "闵行区",
)
_INDUSTRY = (
    "建材",
    "商贸",
    "房地产开发",
    "建筑工程",
    "物流",
    "机械制造",
    "钢铁",
    "化工",
    "食品",
    "电子科技",
    "农业发展",
    "投资管理",
    "装饰工程",
    "汽车销售",
    "餐饮管理",
)
_SUFFIX = ("有限公司", "有限责任公司", "股份有限公司")
_BRAND = "鑫隆盛达恒通泰华宏昌丰源兴旺金瑞祥和荣德利佳美新天宇博远诚信安顺永鸿"
_CLAIMS = (
    "借款本金",
    "货款",
    "工程款",
    "租金",
    "劳动报酬",
    "赔偿款",
    "合同价款",
    "保证金",
    "违约金",
    "垫付款",
)
_SITUATIONS = (1, 2, 3, 4, 5, 6)
_ROLES = ("legal_rep", "principal", "actual_controller", "director", "supervisor")


def id_key(kind: str, value: str) -> str:
    """The identifier's secret as the publisher computes it (protocol.md): HMAC-SHA256 hex."""
    return hmac.new(HASH_KEY, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()


def _person_name(rng: random.Random) -> str:
    n = 1 if rng.random() < 0.3 else 2
    return rng.choice(_SURNAMES) + "".join(rng.choice(_GIVEN) for _ in range(n))


def _id_number(rng: random.Random) -> str:
    body = f"{rng.randrange(110000, 660000):06d}{rng.randrange(1950, 2000)}"
    body += f"{rng.randrange(1, 13):02d}{rng.randrange(1, 29):02d}{rng.randrange(0, 1000):03d}"
    return body + "0123456789X"[rng.randrange(11)]


def _amount(rng: random.Random) -> str:
    v = rng.choice((rng.randrange(1000, 50000), rng.randrange(10000, 2000000)))
    return str(v) if rng.random() < 0.5 else f"{v}.{rng.randrange(100):02d}"


_OBLIGATION_MAIN = (
    "被告{d}于本判决生效之日起十日内偿还原告{c}{k}{a}元",
    "{d}应于调解书生效后{n}日内给付{c}{k}{a}元",
    "被执行人{d}给付申请执行人{c}{k}{a}元",
    "{d}支付{c}{k}{a}元",
    "被告{d}于{y}年{m}月{n}日前向原告{c}返还{k}{a}元",
    "{d}赔偿{c}经济损失{a}元",
    "被告{d}对{c}的{k}{a}元承担连带清偿责任",
    "解除原、被告之间的{t}合同，被告{d}返还原告{c}{k}{a}元",
    "{d}分{n}期向{c}支付{k}{a}元，每期{b}元",
    "确认{c}对{d}享有{k}债权{a}元",
)
_OBLIGATION_EXTRA = (
    "",
    "及利息",
    "及迟延履行期间的债务利息",
    "，并承担案件受理费{b}元",
    "，利息以{a}元为基数按年利率{p}%自{y}年{m}月{n}日起计算至实际给付之日止",
    "，逾期加倍支付迟延履行期间的债务利息",
    "，诉讼费{b}元由被告负担",
    "，保全费{b}元由被告承担",
)
_CONTRACTS = ("借款", "买卖", "租赁", "建设工程施工", "承揽", "服务", "委托", "运输")


def _obligation(rng: random.Random, debtor: str, creditor: str, amount: str) -> str:
    fill = {
        "d": debtor,
        "c": creditor,
        "a": amount,
        "k": rng.choice(_CLAIMS),
        "n": rng.randrange(1, 31),
        "y": rng.randrange(2013, 2026),
        "m": rng.randrange(1, 13),
        "b": rng.randrange(50, 20000),
        "p": rng.choice(("3.85", "4.35", "6", "15.4", "24")),
        "t": rng.choice(_CONTRACTS),
    }
    text = rng.choice(_OBLIGATION_MAIN).format(**fill)
    text += rng.choice(_OBLIGATION_EXTRA).format(**fill)
    if rng.random() < 0.2:
        text += "；" + rng.choice(_OBLIGATION_MAIN).format(**fill)
    return text


def make_record(i: int, rng: random.Random, *, marker: str = "") -> tuple[bytes, str | None]:
    """One canonical-JSON public record; returns (record, plaintext ID used for id_key)."""
    abbr, _prov, cities = rng.choice(_PROVINCES)
    city = rng.choice(cities)
    district = rng.choice(_DISTRICTS)
    court_code = f"{rng.randrange(1, 100):02d}{rng.randrange(1, 100):02d}"
    year = rng.randrange(2014, 2026)
    court = f"{city}{district}人民法院" if rng.random() < 0.85 else f"{city}中级人民法院"
    amount = _amount(rng)
    performed = "0" if rng.random() < 0.8 else _amount(rng)
    entity = rng.random() < 0.2
    creditor = (
        _person_name(rng)
        if rng.random() < 0.6
        else (
            f"{city[:-1]}{rng.choice(_BRAND)}{rng.choice(_BRAND)}{rng.choice(_INDUSTRY)}{rng.choice(_SUFFIX)}"
        )
    )
    obj: dict[str, object] = {
        "entry_id": f"E{i:010d}",
        "case_no": f"({year}){abbr}{court_code}执{rng.randrange(1, 9999)}号",
        "court": court,
        "basis_doc_no": (
            f"({year - rng.randrange(0, 3)}){abbr}{court_code}民初{rng.randrange(1, 20000)}号"
        ),
        "basis_issuer": court,
        "performance": "全部未履行" if performed == "0" else "部分未履行",
        "situation": rng.choice(_SITUATIONS),
        "published_at": f"{year}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}",
        "filed_at": f"{year}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}",
        "performed_amount": performed,
        "unperformed_amount": amount,
        "severity": rng.choice((1, 1, 1, 2, 3)),
        "status": "active" if rng.random() < 0.9 else "revoked",
        "visibility": "public",
        "measures": ["*"],
    }
    if obj["status"] == "revoked":
        obj["revoked_at"] = f"{year + 1}-0{rng.randrange(1, 10)}-1{rng.randrange(0, 9)}T08:00:00Z"
    plaintext: str | None
    if entity:
        brand = rng.choice(_BRAND) + rng.choice(_BRAND)
        name = f"{city}{brand}{rng.choice(_INDUSTRY)}{rng.choice(_SUFFIX)}"
        org = f"{rng.randrange(10**8):08d}" + "0123456789X"[rng.randrange(11)]
        uscc = (
            f"91{rng.randrange(110000, 660000)}{org}"
            + "0123456789ABCDEFGHJKLMNPQRTUWXY"[rng.randrange(31)]
        )
        rep = _person_name(rng)
        rep_id = _id_number(rng)
        related = [
            {
                "role": "legal_rep",
                "name": rep,
                "id_key": id_key("id", rep_id),
                "id_masked": rep_id[:4] + "*" * 10 + rep_id[-4:],
            }
        ]
        if rng.random() < 0.3:
            other = _id_number(rng)
            related.append(
                {
                    "role": rng.choice(_ROLES[1:]),
                    "name": _person_name(rng),
                    "id_key": id_key("id", other),
                    "id_masked": other[:4] + "*" * 10 + other[-4:],
                }
            )
        obj.update(
            subject_type="entity",
            name=name,
            org_key=id_key("org", org),
            uscc=uscc,
            org_code=org,
            legal_rep_name=rep,
            related=related,
        )
        plaintext = rep_id
        obj["obligation"] = _obligation(rng, name, creditor, amount) + marker
    else:
        name = _person_name(rng)
        idn = _id_number(rng)
        obj.update(
            subject_type="person",
            name=name,
            id_key=id_key("id", idn),
            id_masked=idn[:4] + "*" * 10 + idn[-4:],
            gender=rng.choice(("男", "女")),
            age=rng.randrange(20, 75),
        )
        plaintext = idn
        obj["obligation"] = _obligation(rng, name, creditor, amount) + marker
    rec = json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()
    return _seal(obj, rec), plaintext


def _seal(obj: dict[str, object], plain: bytes) -> bytes:
    """The sealed line of a record (its identifier secrets are its ``*_key`` fields)."""
    secrets = [bytes.fromhex(str(obj[f])) for f in ("id_key", "org_key") if f in obj]
    related = obj.get("related")
    if isinstance(related, list):
        secrets += [bytes.fromhex(r["id_key"]) for r in related if "id_key" in r]
    work = sealing.WorkFactor()
    return sealing.seal_record(
        HASH_KEY, str(obj["entry_id"]), plain, [(k, sealing.kek(k, work), 0) for k in secrets]
    )


def rid_of(line: bytes) -> str:
    return sealing.parse_sealed(line).rid.hex()


ENTRY_OF: dict[bytes, int] = {}
"""The entry number of each generated sealed line (a sealed line does not say it)."""


def make_records(n: int, seed: int = 1) -> Iterator[bytes]:
    """``n`` sealed records in record id order (the snapshot's)."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        line = make_record(i, rng)[0]
        ENTRY_OF[line] = i
        lines.append(line)
    yield from sorted(lines, key=rid_of)


# ---------------------------------------------------------------------------------------
# measurement helpers
# ---------------------------------------------------------------------------------------
class Timer:
    """Wall and CPU time of a block (CPU time is the fairer figure on a shared machine)."""

    def __enter__(self) -> Timer:
        self.wall0 = time.perf_counter()
        self.cpu0 = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0


def per_call_us(
    fn: Callable[[bytes], object], keys: list[bytes], repeat: int = 3
) -> tuple[float, float]:
    """Best-of-``repeat`` (wall µs, CPU µs) per call of ``fn`` over ``keys``."""
    best_wall = best_cpu = float("inf")
    for _ in range(repeat):
        with Timer() as t:
            for k in keys:
                fn(k)
        best_wall = min(best_wall, t.wall / len(keys) * 1e6)
        best_cpu = min(best_cpu, t.cpu / len(keys) * 1e6)
    return best_wall, best_cpu


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def digests(records: list[bytes]) -> tuple[str, str]:
    sha = hashlib.sha256()
    total = 0
    for r in records:
        sha.update(r)
        sha.update(b"\n")
        total += int.from_bytes(hashlib.sha256(r).digest(), "big")
    return sha.hexdigest(), f"{total % (1 << 256):064x}"


def record_keys(record: bytes) -> list[bytes]:
    """The lookup keys of a sealed line: its wraps' 4-byte tags."""
    return [t.to_bytes(4, "big") for t, _ in sealing.parse_sealed(record).wraps]


def calibration() -> dict[str, float]:
    """How fast this machine is right now: compare figures across machines with these."""
    import sqlite3

    conn = sqlite3.connect(":memory:", isolation_level=None)
    _w, select1 = per_call_us(lambda _k: conn.execute("SELECT 1").fetchall(), [b""] * 50000)
    _w, loop = per_call_us(lambda _k: sum(range(100)), [b""] * 50000)
    return {"select1_cpu_us": select1, "sum_range_100_cpu_us": loop}


# ---------------------------------------------------------------------------------------
# candidates
# ---------------------------------------------------------------------------------------
def bench_sqlite_store(
    records: list[bytes], workdir: Path, hits: list[bytes], misses: list[bytes]
) -> dict[str, object]:
    from intercept_sdk._client.store import Store

    cache = workdir / "sqlite-store"
    shutil.rmtree(cache, ignore_errors=True)
    sha, total = digests(records)
    store = Store(cache)
    with Timer() as t:
        store.write_snapshot(
            1,
            iter(records),
            manifest=b"{}",
            box=b"box",
            key_epoch=1,
            expected_sha256=sha,
            expected_sum=total,
        )
    out: dict[str, object] = {"load_wall_s": t.wall, "load_cpu_s": t.cpu}
    db = next(cache.glob("list-*.sqlite"))
    out["bytes_per_entry"] = dir_bytes(cache) / len(records)
    import sqlite3

    conn = sqlite3.connect(db)
    try:
        parts = dict(conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name").fetchall())
        out["btree_bytes_per_entry"] = {k: v / len(records) for k, v in parts.items()}
    except sqlite3.OperationalError:  # dbstat not compiled in
        pass
    (body,) = conn.execute("SELECT avg(length(body)) FROM records").fetchone()
    conn.close()
    out["avg_body_bytes"] = body
    out["avg_record_bytes"] = sum(map(len, records)) / len(records)

    store.lookup([hits[0]])
    out["lookup_hit_us"] = per_call_us(lambda k: store.lookup([k]), hits)
    out["lookup_miss_us"] = per_call_us(lambda k: store.lookup([k]), misses)
    with Timer() as t:
        store.lookup_batch(misses)
    out["lookup_batch_misses_keys_per_s"] = (len(misses) / t.wall, len(misses) / t.cpu)
    batch = hits[: len(misses) // 10] + misses[: len(misses) - len(misses) // 10]
    random.Random(3).shuffle(batch)
    with Timer() as t:
        store.lookup_batch(batch)
    out["lookup_batch_10pct_hits_keys_per_s"] = (len(batch) / t.wall, len(batch) / t.cpu)

    # a delta of 10,000 operations (changes, additions, deletions): one transaction
    rng = random.Random(9)
    n = len(records)
    n_touch = min(7500, n // 4)  # 10,000 operations at full size
    touched = sorted(rng.sample(range(n), n_touch))
    new = list(records)
    ops: list[tuple[str, bytes]] = []
    for j, i in enumerate(touched):
        if j % 3 == 2:
            ops.append(("D", rid_of(records[i]).encode()))
            new[i] = b""
        else:
            e = ENTRY_OF[records[i]]  # a new version of the same entry: same record id
            rec = make_record(e, random.Random(e), marker="（已更新）")[0]
            ops.append(("P", rec))
            new[i] = rec
    for i in range(n, n + n_touch // 3):
        rec = make_record(i, random.Random(i))[0]
        ops.append(("P", rec))
        new.append(rec)
    new = sorted((r for r in new if r), key=rid_of)
    sha2, total2 = digests(new)
    with Timer() as t:
        store.apply_delta(
            1,
            2,
            ops,
            manifest=b"{}",
            box=b"box",
            key_epoch=1,
            expected_sum=total2,
            expected_entries=len(new),
            expected_sha256=sha2,
        )
    out["delta_ops"] = len(ops)
    out["delta_s"] = (t.wall, t.cpu)
    with Timer() as t:
        store.verify()
    out["verify_s"] = (t.wall, t.cpu)
    store.close()
    return out


def bench_diskcache(
    records: list[bytes], workdir: Path, hits: list[bytes], misses: list[bytes]
) -> dict[str, object]:
    import inspect

    import diskcache

    out: dict[str, object] = {"version": diskcache.__version__}
    path = workdir / "diskcache"
    shutil.rmtree(path, ignore_errors=True)
    cache = diskcache.Cache(str(path))  # the defaults an integrator gets
    out["size_limit"] = cache.size_limit
    out["eviction_policy"] = cache.eviction_policy
    inserted = 0
    with Timer() as t:
        chunk = 10000
        for i in range(0, len(records), chunk):
            with cache.transact():
                for rec in records[i : i + chunk]:
                    for k in record_keys(rec):  # no secondary index: one copy per key
                        cache.set(k, rec)
                        inserted += 1
    out["load_wall_s"], out["load_cpu_s"] = t.wall, t.cpu
    out["keys_inserted"] = inserted
    present = len(cache)  # fewer than inserted: evicted silently, no error raised
    out["keys_present"] = present
    volume = cache.volume()  # what diskcache compares with size_limit
    out["volume_bytes"] = volume
    cache.get(hits[0])
    out["get_hit_us"] = per_call_us(cache.get, hits)
    out["get_miss_us"] = per_call_us(cache.get, misses)
    out["fetch_unpickles"] = "pickle.load" in inspect.getsource(diskcache.core.Disk.fetch)
    cache.close()  # checkpoints the WAL, so the directory size is the data
    out["bytes_per_entry"] = dir_bytes(path) / len(records)  # capped once eviction starts
    out["bytes_per_key_stored"] = dir_bytes(path) / max(1, present)
    # eviction starts when volume() reaches size_limit: at this many keys / records
    per_key = volume / max(1, present)
    out["default_limit_evicts_from_keys"] = int(2**30 / per_key)
    out["default_limit_evicts_from_records"] = int(2**30 / per_key * len(records) / inserted)

    # Eviction: the default 1 GiB limit is reached at size_limit / bytes-per-entry
    # entries; beyond it every set() silently drops the least recently stored rows.
    # Shown at 1/16 scale (64 MiB) so it runs in seconds; the mechanism is the same.
    small = workdir / "diskcache-small"
    shutil.rmtree(small, ignore_errors=True)
    limit = 2**26
    c2 = diskcache.Cache(str(small), size_limit=limit)
    n2 = min(len(records), int(limit / per_key * len(records) / inserted * 1.5))
    errors = 0
    for i in range(0, n2, 10000):
        with c2.transact():
            for rec in records[i : min(i + 10000, n2)]:
                try:
                    for k in record_keys(rec):
                        c2.set(k, rec)
                except Exception:
                    errors += 1
    out["eviction_demo"] = {
        "size_limit": limit,
        "records_set": n2,
        "keys_present": len(c2),
        "first_record_still_there": c2.get(record_keys(records[0])[0]) is not None,
        "errors_raised": errors,
    }
    c2.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=1_000_000, help="records (default 1,000,000)")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where to build (default: a temp dir)"
    )
    parser.add_argument("--lookups", type=int, default=100_000, help="keys per lookup timing")
    parser.add_argument("--skip-diskcache", action="store_true")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="storage-compare-"))
    workdir.mkdir(parents=True, exist_ok=True)
    import sqlite3
    import zlib

    result: dict[str, object] = {
        "n": args.n,
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "zlib": zlib.ZLIB_RUNTIME_VERSION,
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "calibration": calibration(),
    }
    with Timer() as t:
        records = list(make_records(args.n))
    result["generate_s"] = t.wall
    rng = random.Random(2)
    sample = rng.sample(records, min(args.lookups, len(records)))
    hits = [record_keys(r)[0] for r in sample]
    misses = [os.urandom(4) for _ in range(args.lookups)]
    print(json.dumps(result, indent=1), flush=True)
    result["sqlite_store"] = bench_sqlite_store(records, workdir, hits, misses)
    print(json.dumps(result["sqlite_store"], indent=1), flush=True)
    if not args.skip_diskcache:
        result["diskcache"] = bench_diskcache(records, workdir, hits, misses)
        print(json.dumps(result["diskcache"], indent=1), flush=True)
    result["loadavg_end"] = os.getloadavg()
    out = workdir / "result.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"results in {out}")
    if args.workdir is None:
        shutil.rmtree(workdir / "sqlite-store", ignore_errors=True)
        shutil.rmtree(workdir / "diskcache", ignore_errors=True)
        shutil.rmtree(workdir / "diskcache-small", ignore_errors=True)


if __name__ == "__main__":
    main()
