"""Four small synthetic retrieval corpora with gold questions, written by the team for testing fusion on corpora the
retrieval weights were not tuned on: structured disease cards (name, aliases, symptoms, department, drugs), herb
cards (name, nature, meridians, actions, indications), disease entries in the layout of public disease knowledge
graphs (name, aliases, overview, symptoms, complications, department, treatment, drugs) and drug leaflets (form,
indications, side effects, contraindications, usage). The names, symptoms and drugs are real words, but which entry
lists which facet is drawn at random (seeded): the entries are NOT medical facts.

    python data/make_rag_cards.py            # writes data/rag_cards/<corpus>/<corpus>.jsonl + <corpus>_gold.jsonl

Question kinds: disease cards: named (a named disease's facet), symptoms (listed symptoms -> which disease), drugs
(listed drugs -> which disease), colloquial (symptoms in everyday words -> which disease); herb cards: named,
actions (listed actions -> which herb), colloquial (indications in everyday words -> which herb); disease entries:
named, symptoms, drugs; drug leaflets: named (a named drug's facet), side_effects (listed side effects -> which
drug), indications (two diseases -> which drug).
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

# Disease entries: longer documents in the layout of public disease knowledge graphs (name, aliases, overview,
# symptoms, department, treatment, drugs), many per department and with sibling names (急性X, 小儿X), so that a
# handful of symptoms or drugs names one entry only through the rarer terms among them.
ENTRY_DEPARTMENTS = {  # department -> (extra disease names, body sites, treatments, drugs)
    "呼吸内科": ("肺气肿 肺纤维化 过敏性肺炎 气胸 胸腔积液 肺癌 结节病 急性呼吸窘迫综合征 肺动脉高压 矽肺 慢性咳嗽 "
             "流行性感冒 支原体肺炎 肺曲霉病",
             "胸部 肺部 气管 咽喉 鼻腔 胸膜",
             "抗感染治疗 雾化吸入 氧疗 胸腔穿刺引流 肺康复训练 戒烟",
             "阿莫西林 头孢克肟 左氧氟沙星 阿奇霉素 氨溴索 孟鲁司特 沙丁胺醇 布地奈德 噻托溴铵 异烟肼 利福平 "
             "乙胺丁醇 吡嗪酰胺 奥司他韦 多索茶碱 乙酰半胱氨酸 羧甲司坦"),
    "消化内科": ("急性胃肠炎 肠梗阻 阑尾炎 胆结石 食管炎 贲门失弛缓症 胃癌 结肠息肉 酒精性肝病 自身免疫性肝炎 "
             "幽门螺杆菌感染 消化道出血 缺血性肠病 慢性腹泻",
             "上腹部 下腹部 右上腹 胃脘 肝区 肛门",
             "抑酸治疗 根除幽门螺杆菌 内镜下治疗 饮食调整 补液 手术切除",
             "奥美拉唑 雷贝拉唑 泮托拉唑 多潘立酮 莫沙必利 蒙脱石散 美沙拉嗪 熊去氧胆酸 铝碳酸镁 枸橼酸铋钾 "
             "克拉霉素 双歧杆菌 乳果糖 恩替卡韦 水飞蓟宾 甘草酸二铵"),
    "心血管内科": ("主动脉夹层 感染性心内膜炎 肥厚型心肌病 室性早搏 房室传导阻滞 预激综合征 下肢静脉曲张 "
               "深静脉血栓 高血压性心脏病 先天性心脏病 低血压 心脏神经官能症",
               "心前区 胸骨后 左肩 下肢 颈部血管 心脏",
               "降压治疗 抗血小板治疗 调脂治疗 介入治疗 射频消融 起搏器植入",
               "氨氯地平 硝苯地平 缬沙坦 厄贝沙坦 美托洛尔 比索洛尔 阿司匹林 氯吡格雷 阿托伐他汀 瑞舒伐他汀 "
               "硝酸甘油 单硝酸异山梨酯 呋塞米 螺内酯 华法林 胺碘酮 地高辛 利伐沙班"),
    "神经内科": ("短暂性脑缺血发作 蛛网膜下腔出血 病毒性脑炎 化脓性脑膜炎 吉兰-巴雷综合征 运动神经元病 "
             "紧张型头痛 丛集性头痛 不宁腿综合征 特发性震颤 睡眠障碍 血管性痴呆",
             "头部 面部 四肢 颈项 眼睑 肢端",
             "溶栓治疗 抗癫痫治疗 康复训练 营养神经 针灸理疗 脑深部电刺激",
             "丙戊酸钠 卡马西平 左乙拉西坦 拉莫三嗪 左旋多巴 多巴丝肼 普拉克索 多奈哌齐 美金刚 甲钴胺 "
             "维生素B1 尼莫地平 氟桂利嗪 佐米曲普坦 丁苯酞 依达拉奉 溴吡斯的明"),
    "内分泌科": ("妊娠糖尿病 糖尿病肾病 糖尿病周围神经病变 亚急性甲状腺炎 桥本甲状腺炎 原发性醛固酮增多症 "
             "嗜铬细胞瘤 垂体瘤 尿崩症 低血糖症 高尿酸血症 代谢综合征",
             "甲状腺 颈前 足部 关节 腰背 皮肤",
             "饮食控制 运动治疗 胰岛素治疗 放射性碘治疗 手术切除 补钙",
             "二甲双胍 胰岛素 格列美脲 阿卡波糖 西格列汀 达格列净 利拉鲁肽 甲巯咪唑 丙硫氧嘧啶 左甲状腺素 "
             "别嘌醇 非布司他 秋水仙碱 阿仑膦酸钠 碳酸钙 骨化三醇 螺内酯"),
    "肾内科": ("急性肾小球肾炎 慢性肾小球肾炎 狼疮性肾炎 高血压肾病 肾盂肾炎 膀胱炎 前列腺炎 肾囊肿 "
            "肾动脉狭窄 间质性肾炎 尿毒症 肾小管酸中毒",
            "腰部 肾区 下腹部 尿道 颜面 双下肢",
            "控制血压 低盐低蛋白饮食 血液透析 腹膜透析 肾移植 碎石治疗",
            "泼尼松 环磷酰胺 吗替麦考酚酯 他克莫司 缬沙坦 呋塞米 碳酸氢钠 复方α-酮酸 促红细胞生成素 "
            "左氧氟沙星 呋喃妥因 坦索罗辛 黄葵胶囊 百令胶囊 碳酸镧"),
    "皮肤科": ("神经性皮炎 扁平疣 寻常疣 花斑癣 日光性皮炎 脓疱疮 丹毒 斑秃 黄褐斑 酒渣鼻 单纯疱疹 "
            "药疹 汗疱疹 结节性红斑",
            "面部 头皮 躯干 四肢 手掌 足底",
            "外用药物治疗 光疗 激光治疗 冷冻治疗 抗过敏治疗 避免刺激",
            "氯雷他定 西替利嗪 依巴斯汀 炉甘石洗剂 阿昔洛韦 伐昔洛韦 维A酸 阿达帕林 他克莫司软膏 "
            "特比萘芬 酮康唑 莫匹罗星 卤米松 糠酸莫米松乳膏 异维A酸 氢醌乳膏 米诺环素"),
    "妇科": ("功能失调性子宫出血 卵巢囊肿 宫颈癌 子宫腺肌病 前庭大腺炎 闭经 不孕症 先兆流产 宫外孕 "
           "经前期综合征 乳腺增生 子宫脱垂",
           "下腹部 小腹 腰骶部 外阴 乳房 盆腔",
           "激素治疗 抗感染治疗 宫腔镜手术 腹腔镜手术 中药调理 定期复查",
           "黄体酮 地屈孕酮 炔雌醇环丙孕酮 来曲唑 克罗米芬 甲硝唑 克霉唑 替硝唑 米非司酮 戊酸雌二醇 "
           "桂枝茯苓胶囊 益母草颗粒 逍遥丸 坤泰胶囊 乳癖消"),
    "骨科": ("股骨头坏死 半月板损伤 网球肘 腰肌劳损 膝关节滑膜炎 跟腱炎 脊柱侧弯 骨髓炎 腕管综合征 "
           "梨状肌综合征 颈肩综合征 踝关节扭伤",
           "颈部 肩部 腰部 膝关节 髋部 足跟",
           "牵引治疗 手术复位 石膏固定 关节置换 理疗 功能锻炼",
           "双氯芬酸 塞来昔布 布洛芬 依托考昔 洛索洛芬 氨基葡萄糖 硫酸软骨素 甲钴胺 乙哌立松 "
           "骨化三醇 碳酸钙 甲氨蝶呤 柳氮磺吡啶 来氟米特 云南白药 伤湿止痛膏"),
    "耳鼻喉科": ("鼻出血 鼻息肉 腺样体肥大 声带息肉 外耳道炎 耳石症 分泌性中耳炎 慢性扁桃体炎 会厌炎 "
             "咽异感症 嗅觉障碍 鼻咽炎",
             "鼻腔 咽部 喉部 耳道 鼻窦 扁桃体",
             "鼻腔冲洗 手术摘除 耳石复位 雾化吸入 抗感染治疗 声带休息",
             "糠酸莫米松鼻喷雾剂 布地奈德鼻喷雾剂 氮卓斯汀 氯雷他定 羟甲唑啉 阿莫西林克拉维酸钾 头孢呋辛 "
             "氧氟沙星滴耳液 倍他司汀 甲钴胺 金嗓子喉片 蒲地蓝消炎口服液 鼻渊通窍颗粒"),
    "眼科": ("近视 远视 散光 弱视 斜视 睑缘炎 泪囊炎 黄斑变性 糖尿病视网膜病变 视神经炎 飞蚊症 "
           "翼状胬肉 沙眼 倒睫",
           "眼睑 结膜 角膜 眼底 眼眶 泪道",
           "配镜矫正 激光治疗 手术治疗 人工泪液 热敷 抗感染滴眼",
           "氧氟沙星滴眼液 左氧氟沙星滴眼液 妥布霉素滴眼液 玻璃酸钠滴眼液 噻吗洛尔 拉坦前列素 "
           "阿托品滴眼液 更昔洛韦眼用凝胶 氟米龙滴眼液 普拉洛芬滴眼液 七叶洋地黄双苷滴眼液"),
    "儿科": ("小儿支气管炎 小儿哮喘 新生儿黄疸 小儿厌食 小儿惊厥 川崎病 佝偻病 疱疹性咽峡炎 "
           "婴儿湿疹 小儿便秘 遗尿症 儿童多动症 过敏性紫癜 轮状病毒肠炎",
           "咽部 口腔 皮肤 腹部 手足 头颈",
           "退热治疗 补液 雾化吸入 隔离 补充维生素D 行为治疗",
           "布洛芬混悬液 对乙酰氨基酚 阿莫西林 头孢克洛 阿奇霉素 蒙脱石散 口服补液盐 益生菌 "
           "维生素D滴剂 孟鲁司特 丙种球蛋白 利巴韦林 小儿豉翘清热颗粒 健胃消食片"),
}
# General signs combined with a department's body sites ("胸部疼痛", "颈部肿胀"), plus signs on their own.
SITE_SIGNS = "疼痛 肿胀 压痛 麻木 瘙痒 灼热感 发红 出血 包块 僵硬 刺痛 酸胀".split()
ENTRY_MODIFIERS = "急性 慢性 小儿 老年 妊娠期 复发性 难治性 继发性".split()
POPULATIONS = ("儿童", "青壮年", "中老年人", "女性", "老年人", "体弱者", "长期伏案工作者", "吸烟者")
COURSES = ("起病较急", "起病隐匿", "病程迁延", "易反复发作", "早期治疗预后良好", "需长期随访")
ENTRY_TEMPLATES = {"department": ("{name}应该挂哪个科？", "{name}看什么科？"),
                   "treatment": ("{name}怎么治疗？", "{name}有哪些治疗方法？"),
                   "drugs": ("{name}常用什么药？", "{name}吃什么药好？"),
                   "symptoms": ("{name}有什么症状？", "{name}的主要表现有哪些？"),
                   "aliases": ("{name}的别名是什么？",)}
SYMPTOM_TEMPLATES = ("出现{}、{}、{}，可能是什么病？", "{}，{}，还{}，是什么病？", "患者{}伴{}、{}，考虑哪种疾病？")
DRUG_TEMPLATES = ("{}一起用，一般是治什么病的？", "医生开了{}，这是治什么病？")

SIDE_EFFECTS = ("恶心 呕吐 腹泻 头晕 头痛 皮疹 瘙痒 口干 便秘 失眠 嗜睡 乏力 心悸 肝功能异常 肾功能损害 低血糖 低血压 水肿 "
                "干咳 味觉异常 光敏反应 白细胞减少 血小板减少 胃肠不适 肌肉疼痛 牙龈出血 视物模糊 耳鸣 月经紊乱 体重增加").split()
CONTRAINDICATIONS = ("孕妇禁用", "哺乳期妇女禁用", "严重肝功能不全者禁用", "严重肾功能不全者禁用", "对本品过敏者禁用",
                     "儿童慎用", "消化道溃疡患者禁用", "哮喘患者慎用", "青光眼患者禁用", "心动过缓者禁用")
FORMS = ("片剂", "胶囊", "颗粒", "缓释片", "注射液", "口服液")
LEAFLET_TEMPLATES = {"side_effects": ("{drug}有哪些不良反应？", "吃{drug}会有什么副作用？"),
                     "indications": ("{drug}能治什么病？", "{drug}的适应症是什么？"),
                     "contraindications": ("哪些人不能用{drug}？", "{drug}有什么禁忌？")}


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


def disease_entries(rng: random.Random) -> tuple[list[dict], list[dict]]:
    names = []
    for department, (extra, *_rest) in ENTRY_DEPARTMENTS.items():
        for base in DEPARTMENTS[department].split() + extra.split():
            allowed = [m for m in ENTRY_MODIFIERS if not any(n in base for n in ENTRY_MODIFIERS + ["新生儿", "婴儿"])
                       and not (department == "儿科" and m in ("小儿", "老年", "妊娠期"))]
            names += [(department, base)] + [(department, m + base) for m in rng.sample(allowed, min(len(allowed), rng.randint(0, 4)))]
    entries = []
    for department, name in names:
        _, sites, treatments, drugs = ENTRY_DEPARTMENTS[department]
        signs = [site + sign for site in sites.split() for sign in SITE_SIGNS]
        entry = {"id": f"e{len(entries) + 1:04d}", "title": name, "department": department,
                 "aliases": f"{name}症" if rng.random() < 0.25 else "无",
                 "symptoms": rng.sample(signs, rng.randint(3, 5)) + rng.sample(sorted(SYMPTOMS), rng.randint(2, 3)),
                 "treatments": rng.sample(treatments.split(), rng.randint(2, 3)),
                 "drugs": rng.sample(drugs.split(), rng.randint(2, 4)) + rng.sample(DRUGS, rng.randint(0, 1)),
                 "complications": rng.sample([n for d, n in names if d == department and n != name], 2)}
        rng.shuffle(entry["symptoms"])
        entries.append(entry)
    rows = [{"id": e["id"], "title": e["title"],
             "text": (f"{e['title']}，别名：{e['aliases']}。概述：{e['title']}是{e['department']}的常见疾病，多见于"
                      f"{rng.choice(POPULATIONS)}，{rng.choice(COURSES)}。主要症状：{'、'.join(e['symptoms'])}。"
                      f"可并发{'、'.join(e['complications'])}。就诊科室：{e['department']}。治疗方式：{'、'.join(e['treatments'])}。"
                      f"常用药物：{'、'.join(dict.fromkeys(e['drugs']))}。")} for e in entries]
    gold = []
    for i, entry in enumerate(rng.sample(entries, 300)):
        kind = ("named", "symptoms", "drugs")[i % 3]
        if kind == "named":
            facet = rng.choice([f for f in ENTRY_TEMPLATES if f != "aliases" or entry["aliases"] != "无"])
            question = rng.choice(ENTRY_TEMPLATES[facet]).format(name=entry["title"])
        elif kind == "symptoms":
            question = rng.choice(SYMPTOM_TEMPLATES).format(*rng.sample(entry["symptoms"], 3))
        else:
            drugs = rng.sample(list(dict.fromkeys(entry["drugs"])), min(3, len(set(entry["drugs"]))))
            question = rng.choice(DRUG_TEMPLATES).format("、".join(drugs[:-1]) + "和" + drugs[-1])
        gold.append({"id": f"entry-{i + 1:03d}", "kind": kind, "question": question,
                     "gold_ids": [f"disease_entries/{entry['id']}"]})
    return rows, gold


def drug_leaflets(rng: random.Random) -> tuple[list[dict], list[dict]]:
    departments: dict[str, str] = {}  # drug -> the first department that lists it
    for department, (_extra, _sites, _treatments, drugs) in ENTRY_DEPARTMENTS.items():
        for drug in drugs.split():
            departments.setdefault(drug, department)
    leaflets = []
    for drug, department in departments.items():
        diseases = (DEPARTMENTS[department] + " " + ENTRY_DEPARTMENTS[department][0]).split()
        form = rng.choice(FORMS)
        usage = (f"静脉滴注，一日{rng.randint(1, 2)}次" if form == "注射液" else
                 f"口服，一次{rng.randint(1, 2)}{ {'片剂': '片', '缓释片': '片', '胶囊': '粒', '颗粒': '袋'}.get(form, '支')}，"
                 f"一日{rng.randint(1, 3)}次")
        leaflets.append({"id": f"m{len(leaflets) + 1:03d}", "title": drug, "indications": rng.sample(diseases, 3),
                         "side_effects": rng.sample(SIDE_EFFECTS, rng.randint(3, 4)),
                         "contraindications": rng.sample(CONTRAINDICATIONS, rng.randint(1, 2)),
                         "usage": usage, "form": form})
    rows = [{"id": m["id"], "title": m["title"],
             "text": (f"{m['title']}（{m['form']}）。适应症：{'、'.join(m['indications'])}。不良反应："
                      f"{'、'.join(m['side_effects'])}。禁忌：{'，'.join(m['contraindications'])}。用法用量：{m['usage']}。")}
            for m in leaflets]
    gold = []
    for i, leaflet in enumerate(rng.sample(leaflets, 150)):
        kind = ("named", "side_effects", "indications")[i % 3]
        if kind == "named":
            question = rng.choice(LEAFLET_TEMPLATES[rng.choice(sorted(LEAFLET_TEMPLATES))]).format(drug=leaflet["title"])
        elif kind == "side_effects":
            a, b, c = rng.sample(leaflet["side_effects"], 3)
            question = f"用药后出现{a}、{b}和{c}，可能是哪种药的不良反应？"
        else:
            a, b = rng.sample(leaflet["indications"], 2)
            question = f"既能治{a}又能治{b}的是哪种药？"
        gold.append({"id": f"drug-{i + 1:03d}", "kind": kind, "question": question,
                     "gold_ids": [f"drug_leaflets/{leaflet['id']}"]})
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
    for name, make in (("disease_cards", disease_cards), ("herb_cards", herb_cards),
                       ("disease_entries", disease_entries), ("drug_leaflets", drug_leaflets)):
        rows, gold = make(random.Random(args.seed))
        (out / name).mkdir(exist_ok=True)
        write(rows, out / name / f"{name}.jsonl")
        write(gold, out / f"{name}_gold.jsonl")
        print(f"{name}: {len(rows)} cards, {len(gold)} questions -> {out}")


if __name__ == "__main__":
    main()
