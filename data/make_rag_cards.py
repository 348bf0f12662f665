"""Two small synthetic retrieval corpora with gold questions, written by the team for testing fusion on corpora the
retrieval weights were not tuned on: structured disease cards (name, aliases, symptoms, department, drugs) and herb
cards (name, nature, meridians, actions, indications). The disease names, herbs, symptoms and drugs are real words,
but which card lists which symptoms, drugs or actions is drawn at random (seeded): the cards are NOT medical facts.

    python data/make_rag_cards.py            # writes data/rag_cards/{disease_cards,herb_cards}.jsonl + gold files

Question kinds: disease cards: named (a named disease's facet), symptoms (listed symptoms -> which disease), drugs
(listed drugs -> which disease), colloquial (symptoms in everyday words -> which disease); herb cards: named,
actions (listed actions -> which herb), colloquial (indications in everyday words -> which herb).
"""

import argparse
import json
import random
from pathlib import Path

DEPARTMENTS = {
    "呼吸内科": ("肺炎 支气管炎 支气管哮喘 慢性阻塞性肺疾病 肺结核 支气管扩张 肺脓肿 胸膜炎 上呼吸道感染 间质性肺病 肺栓塞 "
             "睡眠呼吸暂停综合征"),
    "消化内科": ("胃炎 消化性溃疡 胃食管反流病 肠易激综合征 溃疡性结肠炎 克罗恩病 脂肪肝 肝硬化 胆囊炎 胰腺炎 功能性消化不良 "
             "病毒性肝炎"),
    "心血管内科": "高血压 冠心病 心绞痛 心肌梗死 心力衰竭 心房颤动 心肌炎 心包炎 风湿性心脏病 扩张型心肌病 病态窦房结综合征",
    "神经内科": "偏头痛 脑梗死 脑出血 癫痫 帕金森病 阿尔茨海默病 面神经炎 三叉神经痛 重症肌无力 多发性硬化 周围神经病",
    "内分泌科": "糖尿病 甲状腺功能亢进症 甲状腺功能减退症 痛风 骨质疏松症 库欣综合征 肥胖症 甲状腺结节 高脂血症",
    "肾内科": "肾炎 肾病综合征 慢性肾衰竭 尿路感染 肾结石 多囊肾 IgA肾病 急性肾损伤",
    "皮肤科": "湿疹 银屑病 荨麻疹 带状疱疹 痤疮 白癜风 脂溢性皮炎 手足癣 接触性皮炎 玫瑰糠疹",
    "妇科": "月经不调 痛经 子宫肌瘤 盆腔炎 阴道炎 多囊卵巢综合征 子宫内膜异位症 更年期综合征 宫颈炎",
    "骨科": "颈椎病 腰椎间盘突出症 肩周炎 骨关节炎 类风湿关节炎 强直性脊柱炎 腱鞘炎 足底筋膜炎 骨折",
    "耳鼻喉科": "鼻窦炎 过敏性鼻炎 中耳炎 咽炎 扁桃体炎 喉炎 梅尼埃病 突发性耳聋 鼻中隔偏曲",
    "眼科": "结膜炎 白内障 青光眼 干眼症 角膜炎 麦粒肿 视网膜脱离 葡萄膜炎",
    "儿科": "手足口病 小儿腹泻 水痘 麻疹 幼儿急疹 百日咳 小儿肺炎 猩红热 流行性腮腺炎",
}
# Symptom -> an everyday way of saying it (the colloquial questions use the right side only).
SYMPTOMS = {
    "发热": "身上发烫", "咳嗽": "老是咳", "咳痰": "嗓子里有痰", "气促": "喘不上气", "胸痛": "胸口疼", "心悸": "心慌",
    "头痛": "脑袋疼", "头晕": "天旋地转", "乏力": "浑身没劲", "恶心": "想吐", "呕吐": "吐了好几回", "腹痛": "肚子疼",
    "腹泻": "拉肚子", "便秘": "好几天解不出大便", "腹胀": "肚子胀鼓鼓的", "反酸": "胃里往上冒酸水", "食欲减退": "不想吃饭",
    "黄疸": "皮肤和眼睛发黄", "水肿": "腿肿一按一个坑", "尿频": "总想上厕所小便", "尿痛": "小便时刺痛", "血尿": "尿里带血",
    "皮疹": "身上起疹子", "瘙痒": "皮肤痒得厉害", "关节肿痛": "关节又肿又疼", "腰痛": "腰疼", "肢体麻木": "手脚发麻",
    "失眠": "晚上睡不着", "多汗": "动不动就出汗", "消瘦": "人一下子瘦了很多", "口干": "嘴里发干", "多饮": "总是口渴想喝水",
    "视物模糊": "看东西模模糊糊", "眼红": "眼睛发红", "耳鸣": "耳朵里嗡嗡响", "鼻塞": "鼻子不通气", "流涕": "流鼻涕",
    "咽痛": "嗓子疼", "声音嘶哑": "说话哑了", "抽搐": "手脚抽筋发作", "记忆力减退": "记性越来越差", "震颤": "手一直抖",
    "月经量多": "来例假量特别多", "下腹痛": "小肚子疼", "颈部僵硬": "脖子发僵", "肩部疼痛": "肩膀疼抬不起胳膊",
    "晨僵": "早上起来关节发硬", "畏寒": "特别怕冷", "咯血": "咳出血来", "盗汗": "夜里睡觉出汗",
}
DRUGS = ("阿莫西林 头孢克肟 左氧氟沙星 阿奇霉素 布洛芬 对乙酰氨基酚 奥美拉唑 雷贝拉唑 多潘立酮 蒙脱石散 美沙拉嗪 熊去氧胆酸 "
         "氨氯地平 缬沙坦 美托洛尔 阿司匹林 阿托伐他汀 硝酸甘油 呋塞米 螺内酯 华法林 胺碘酮 氯吡格雷 丙戊酸钠 卡马西平 "
         "左旋多巴 多奈哌齐 甲钴胺 二甲双胍 胰岛素 格列美脲 甲巯咪唑 左甲状腺素 别嘌醇 非布司他 阿仑膦酸钠 碳酸钙 "
         "泼尼松 环磷酰胺 氯雷他定 西替利嗪 炉甘石洗剂 阿昔洛韦 维A酸 他克莫司软膏 特比萘芬 甲硝唑 克霉唑 黄体酮 "
         "炔雌醇环丙孕酮 双氯芬酸 塞来昔布 甲氨蝶呤 柳氮磺吡啶 氨基葡萄糖 糠酸莫米松鼻喷雾剂 孟鲁司特 沙丁胺醇 布地奈德 "
         "异烟肼 利福平 氨溴索 氧氟沙星滴眼液 玻璃酸钠滴眼液 噻吗洛尔 倍他司汀 蒲地蓝消炎口服液 连花清瘟胶囊").split()
FACETS = {"aliases": "别名", "symptoms": "主要症状", "department": "就诊科室", "drugs": "常用药物"}
NAMED_TEMPLATES = {"department": ("{name}应该挂哪个科？", "得了{name}去医院看哪个科室？"),
                   "drugs": ("{name}常用哪些药物治疗？", "{name}一般吃什么药？"),
                   "symptoms": ("{name}有哪些主要症状？", "{name}会出现什么表现？"),
                   "aliases": ("{name}还有什么别的叫法？",)}

HERBS = ("人参 党参 黄芪 白术 山药 甘草 大枣 当归 熟地黄 白芍 阿胶 何首乌 枸杞子 麦冬 天冬 石斛 玉竹 百合 鹿茸 杜仲 续断 "
         "菟丝子 补骨脂 麻黄 桂枝 紫苏叶 生姜 荆芥 防风 羌活 白芷 细辛 薄荷 牛蒡子 蝉蜕 桑叶 菊花 柴胡 葛根 升麻 石膏 知母 "
         "栀子 黄芩 黄连 黄柏 龙胆 金银花 连翘 板蓝根 蒲公英 鱼腥草 生地黄 玄参 牡丹皮 赤芍 大黄 芒硝 火麻仁 独活 秦艽 "
         "茯苓 薏苡仁 泽泻 车前子 茵陈 附子 干姜 肉桂 吴茱萸 陈皮 枳实 木香 香附 山楂 神曲 麦芽 三七 蒲黄 川芎 延胡索 丹参 "
         "红花 桃仁 益母草 牛膝 半夏 天南星 桔梗 川贝母 杏仁 酸枣仁 远志 天麻 钩藤 石决明 五味子 山茱萸").split()
NATURES = ("寒", "凉", "平", "温", "热", "微寒", "微温")
TASTES = ("甘", "苦", "辛", "酸", "咸", "淡", "涩")
MERIDIANS = ("肺", "脾", "胃", "心", "肝", "肾", "胆", "大肠", "小肠", "膀胱", "心包", "三焦")
ACTIONS = ("补气健脾", "养血调经", "滋阴润燥", "温阳散寒", "发汗解表", "疏散风热", "清热泻火", "清热解毒", "凉血止血",
           "活血化瘀", "行气止痛", "燥湿化痰", "止咳平喘", "利水渗湿", "安神定志", "平肝息风", "消食和中", "润肠通便",
           "祛风除湿", "收敛固涩", "温中止呕", "清肝明目", "补肾强骨", "生津止渴")
# Indication -> everyday words.
INDICATIONS = {"感冒发热": "着凉后发烧", "咳嗽痰多": "咳嗽老有痰", "食少便溏": "吃得少大便稀", "失眠多梦": "晚上睡不好老做梦",
               "头痛眩晕": "头疼头昏", "月经不调": "例假不准时", "风湿痹痛": "一到阴雨天关节就疼", "小便不利": "小便不通畅",
               "咽喉肿痛": "嗓子又红又疼", "目赤肿痛": "眼睛红肿疼", "腰膝酸软": "腰和膝盖发酸没劲", "脘腹胀痛": "胃和肚子胀着疼",
               "心悸怔忡": "心里发慌乱跳", "疮痈肿毒": "身上长疮化脓", "跌打损伤": "摔伤碰伤淤青", "口渴多饮": "总是口干想喝水",
               "大便秘结": "大便干结拉不出", "自汗盗汗": "白天夜里都爱出汗", "水肿": "身上浮肿", "呕吐呃逆": "恶心想吐还打嗝"}


def disease_cards(rng: random.Random) -> tuple[list[dict], list[dict]]:
    cards = []
    for department, names in DEPARTMENTS.items():
        for base in names.split():
            for prefix in ("", "急性", "慢性") if rng.random() < 0.35 else ("",):
                name = prefix + base
                symptoms = rng.sample(sorted(SYMPTOMS), rng.randint(4, 6))
                drugs = rng.sample(DRUGS, rng.randint(2, 4))
                aliases = [f"{name}症"] if rng.random() < 0.3 else []
                cards.append({"id": f"d{len(cards) + 1:03d}", "title": name, "aliases": "、".join(aliases) or "无",
                              "symptoms": symptoms, "department": department, "drugs": drugs})
    rows = []
    for card in cards:
        text = (f"{card['title']}，别名：{card['aliases']}。主要症状：{'、'.join(card['symptoms'])}。"
                f"就诊科室：{card['department']}。常用药物：{'、'.join(card['drugs'])}。")
        rows.append({"id": card["id"], "title": card["title"], "text": text})
    gold = []
    for i, card in enumerate(rng.sample(cards, min(100, len(cards)))):
        kind = ("named", "symptoms", "drugs", "colloquial")[i % 4]
        if kind == "named":
            facet = rng.choice([f for f in NAMED_TEMPLATES if f != "aliases" or card["aliases"] != "无"])
            question = rng.choice(NAMED_TEMPLATES[facet]).format(name=card["title"])
        elif kind == "symptoms":
            question = f"出现{'、'.join(rng.sample(card['symptoms'], 3))}，可能是什么病？"
        elif kind == "drugs":
            question = f"{'和'.join(rng.sample(card['drugs'], 2))}一起用，一般是治什么病的？"
        else:
            question = f"最近{'，'.join(SYMPTOMS[s] for s in rng.sample(card['symptoms'], 3))}，这是得了什么病？"
        gold.append({"id": f"card-{i + 1:03d}", "kind": kind, "question": question,
                     "gold_ids": [f"disease_cards/{card['id']}"]})
    return rows, gold


def herb_cards(rng: random.Random) -> tuple[list[dict], list[dict]]:
    cards = []
    for herb in HERBS:
        cards.append({"id": f"h{len(cards) + 1:03d}", "title": herb,
                      "nature": f"味{'、'.join(rng.sample(TASTES, rng.randint(1, 2)))}，性{rng.choice(NATURES)}",
                      "meridians": rng.sample(MERIDIANS, rng.randint(1, 3)), "actions": rng.sample(ACTIONS, 2),
                      "indications": rng.sample(sorted(INDICATIONS), 3)})
    rows = [{"id": c["id"], "title": c["title"],
             "text": (f"{c['title']}：{c['nature']}，归{'、'.join(c['meridians'])}经。功效：{'，'.join(c['actions'])}。"
                      f"主治：{'，'.join(c['indications'])}。")} for c in cards]
    gold = []
    for i, card in enumerate(rng.sample(cards, min(90, len(cards)))):
        kind = ("named", "actions", "colloquial")[i % 3]
        if kind == "named":
            question = rng.choice(("{h}的性味归经是什么？", "{h}有什么功效？", "{h}主治哪些病证？")).format(h=card["title"])
        elif kind == "actions":
            question = f"哪味中药既能{card['actions'][0]}，又能{card['actions'][1]}？"
        else:
            question = f"{'，'.join(INDICATIONS[s] for s in rng.sample(card['indications'], 2))}，可以用哪味中药？"
        gold.append({"id": f"herb-{i + 1:03d}", "kind": kind, "question": question,
                     "gold_ids": [f"herb_cards/{card['id']}"]})
    return rows, gold


def write(rows: list[dict], path: Path) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="data/rag_cards", help="Folder for the corpora and gold files.")
    parser.add_argument("--seed", type=int, default=0, help="Random seed of the facet assignment.")
    args = parser.parse_args()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, make in (("disease_cards", disease_cards), ("herb_cards", herb_cards)):
        rows, gold = make(random.Random(args.seed))
        (out / name).mkdir(exist_ok=True)
        write(rows, out / name / f"{name}.jsonl")
        write(gold, out / f"{name}_gold.jsonl")
        print(f"{name}: {len(rows)} cards, {len(gold)} questions -> {out}")


if __name__ == "__main__":
    main()
