"""The phrase tables of the prompt grammar, English and Chinese.

Each ``Rule`` is a regular expression for one way of asking for an operation, and a builder
that turns the match into an ``Op``. ``Modifier`` rules ("slightly", "at the top", "in red")
adjust the nearest operation that takes them. ``FILLER`` lists the words a prompt may contain
around the phrases ("please", "make it", "图片", "一下"); anything else is not understood and
the prompt is refused. Patterns are matched against the lower-cased prompt, in which quoted
text has been replaced by a placeholder ``⟦n⟧``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from retouch.engine.classic.operations import Op, OpName, Rgb

COLORS: dict[str, Rgb] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "red": (220, 30, 40),
    "green": (40, 160, 60),
    "blue": (40, 90, 200),
    "yellow": (250, 210, 40),
    "orange": (245, 140, 30),
    "purple": (130, 60, 170),
    "pink": (245, 150, 190),
    "gray": (128, 128, 128),
    "grey": (128, 128, 128),
    "brown": (120, 80, 45),
    "beige": (225, 210, 180),
    "cyan": (40, 200, 220),
    "navy": (20, 35, 90),
    "light blue": (150, 200, 240),
    "sky blue": (120, 190, 240),
    "dark blue": (20, 40, 120),
    "light gray": (210, 210, 210),
    "light grey": (210, 210, 210),
    "dark gray": (64, 64, 64),
    "dark grey": (64, 64, 64),
}
ZH_COLORS: dict[str, Rgb] = {
    "白": COLORS["white"],
    "黑": COLORS["black"],
    "红": COLORS["red"],
    "绿": COLORS["green"],
    "蓝": COLORS["blue"],
    "黄": COLORS["yellow"],
    "橙": COLORS["orange"],
    "紫": COLORS["purple"],
    "粉": COLORS["pink"],
    "粉红": COLORS["pink"],
    "灰": COLORS["gray"],
    "棕": COLORS["brown"],
    "米": COLORS["beige"],
    "青": COLORS["cyan"],
    "天蓝": COLORS["sky blue"],
    "浅蓝": COLORS["light blue"],
    "深蓝": COLORS["dark blue"],
    "浅灰": COLORS["light gray"],
    "深灰": COLORS["dark gray"],
}


def _alternation(words: list[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


EN_COLOR = rf"(?P<color>{_alternation(list(COLORS))})"
ZH_COLOR = rf"(?P<zhcolor>{_alternation(list(ZH_COLORS))})"
THE = r"(?:the\s+|a\s+|an\s+)?"
IMAGE = r"(?:image|photo|picture|pic|photograph)"
SECOND = r"(?:second|2nd|other|next|last)\s+" + IMAGE + r"|" + IMAGE + r"\s*(?:2|two|#2)"
ZH_SECOND = r"第(?:二|2)张(?:图片|图像|照片|图)?"
QUOTE = r"⟦(?P<quote>\d+)⟧"

Builder = Callable[[re.Match[str]], Op]
# Within one pattern, alternatives are tried left to right and the first that fits wins, so a
# longer phrase must come before its own prefix ("cool it down" before "cool").


@dataclass(frozen=True)
class Rule:
    pattern: re.Pattern[str]
    build: Builder
    priority: int = 1
    """Among matches starting at the same place, the higher priority wins (a specific
    "remove the background" over the generic "remove ...")."""


@dataclass(frozen=True)
class Modifier:
    kind: str
    pattern: re.Pattern[str]
    apply: Callable[[Op, re.Match[str]], Op | None]
    """Returns the adjusted op, or None when the op does not take this modifier."""


def _compile(pattern: str) -> re.Pattern[str]:
    # English phrases must stand as whole words; Chinese has no word boundaries.
    if pattern.isascii():
        return re.compile(rf"(?<![a-z0-9])(?:{pattern})(?![a-z0-9])")
    if not any("\u4e00" <= c <= "\u9fff" for c in pattern):  # English around a quote
        return re.compile(rf"(?<![a-z0-9])(?:{pattern})")
    return re.compile(pattern)


def fixed(name: OpName, *patterns: str, priority: int = 1, **fields: object) -> list[Rule]:
    op = Op(name, **fields)  # type: ignore[arg-type]

    def build(_match: re.Match[str]) -> Op:
        return op

    return [Rule(_compile(p), build, priority) for p in patterns]


def built(builder: Builder, *patterns: str, priority: int = 1) -> list[Rule]:
    return [Rule(_compile(p), builder, priority) for p in patterns]


def color_of(match: re.Match[str]) -> Rgb | None:
    groups = match.groupdict()
    if groups.get("color"):
        return COLORS[groups["color"]]
    if groups.get("zhcolor"):
        return ZH_COLORS[groups["zhcolor"]]
    return None


def _background_color(match: re.Match[str]) -> Op:
    return Op("background_color", color=color_of(match))


def _rotate(match: re.Match[str]) -> Op:
    groups = match.groupdict()
    degrees = int(groups.get("deg") or 90)
    way = groups.get("dir") or ""
    if any(w in way for w in ("counter", "anti", "ccw", "left", "逆", "左")):
        degrees = -degrees
    return Op("rotate", degrees=degrees % 360 if degrees % 90 == 0 else degrees)


def _flip(match: re.Match[str]) -> Op:
    axis = match.groupdict().get("axis") or ""
    vertical = any(w in axis for w in ("vertical", "upside", "top", "up-down", "垂直", "上下"))
    return Op("flip", axis="vertical" if vertical else "horizontal")


def _posterize(match: re.Match[str]) -> Op:
    levels = match.groupdict().get("levels")
    return Op("posterize", levels=int(levels) if levels else 0)


def _text(match: re.Match[str]) -> Op:
    return Op("text", text=match.group("quote"))  # the quote's index; the grammar resolves it


def _fill(match: re.Match[str]) -> Op:
    return Op("fill", subject=(match.groupdict().get("obj") or "").strip())


MORE = r"(?:more|higher|increase(?:d)?|boost(?:ed)?|raise(?:d)?|stronger|enhance(?:d)?|add|up)"
LESS = r"(?:less|lower(?:ed)?|reduce(?:d)?|decrease(?:d)?|weaker|soften(?:ed)?|down)"
# Connectors that end a free-form object phrase ("remove the car and ...").
_OBJ = r"(?P<obj>(?:\s+(?!(?:and|then|with|plus|also|but)\b)[a-z0-9'-]+){0,6})"
_ZH_OBJ = r"(?P<obj>[^，,。；;、和并然再⟦]{0,12})"
_ZH_OBJ_BEFORE = r"(?P<obj>[^，,。；;、和并然再⟦]{1,12}?)"

RULES: list[Rule] = [
    # --- background (priority 2: specific forms of "remove ..." and "blur ...") ----------
    *fixed(
        "remove_background",
        rf"(?:remove|delete|erase|cut\s+out|take\s+out|get\s+rid\s+of|drop|strip|clear)\s+{THE}(?:background|backdrop|bg)",
        rf"(?:make\s+)?{THE}(?:background|backdrop)\s+transparent",
        r"(?:a\s+)?transparent\s+(?:background|backdrop|bg)",
        rf"cut\s*out\s+{THE}(?:subject|foreground|object|person|product)",
        rf"isolate\s+{THE}(?:subject|foreground|object|person|product)",
        r"(?:去除|去掉|删除|删掉|移除|抠掉|扣掉|消除|清除)(?:了)?(?:图片的|照片的)?背景",
        r"把背景(?:去掉|去除|删除|删掉|移除|抠掉|扣掉|消除|变透明|设为透明|改成透明|换成透明)",
        r"背景(?:变成|改成|设为|设置为|换成)?透明",
        r"透明(?:的)?背景",
        r"抠图|抠出(?:主体|人物|物体)?",
        priority=2,
    ),
    *built(
        _background_color,
        rf"(?:on|onto|against|with|to|into|over)?\s*{THE}(?:plain\s+|solid\s+)?{EN_COLOR}\s+(?:background|backdrop|bg)",
        rf"(?:change|make|turn|set|replace|paint)\s+{THE}(?:background|backdrop)\s+(?:to\s+|into\s+|with\s+)?{THE}(?:plain\s+|solid\s+)?{EN_COLOR}(?:\s+(?:colou?r|one))?",
        rf"{THE}(?:background|backdrop)\s+(?:in\s+|to\s+)?{EN_COLOR}",
        rf"(?:换成|改成|变成|换为|改为|设为|用)?{ZH_COLOR}色?(?:的)?(?:背景|底色|底)",
        rf"(?:把)?背景(?:颜色)?(?:换成|改成|变成|换为|改为|设为|设置为|替换为|用|是)?{ZH_COLOR}色?(?:的)?",
        priority=2,
    ),
    *fixed(
        "background_image",
        rf"(?:use|using|with|take)\s+{THE}(?:{SECOND})\s+as\s+{THE}(?:new\s+)?(?:background|backdrop)",
        rf"(?:replace|change|swap)\s+{THE}(?:background|backdrop)\s+(?:with|for|to)\s+{THE}(?:{SECOND})",
        rf"(?:put|place|paste|composite)\s+(?:it|him|her|them|{THE}(?:subject|person|object|foreground))\s+(?:on|onto|in|into|over)\s+{THE}(?:{SECOND})",
        rf"(?:on|onto|over)\s+{THE}(?:{SECOND})\s+as\s+{THE}(?:background|backdrop)",
        rf"(?:用|把|将|以)?{ZH_SECOND}(?:作为|当作|当成|当|做|作)(?:新的?)?背景",
        rf"背景(?:换成|替换为|替换成|改成|用){ZH_SECOND}",
        rf"(?:放到|放在|贴到|合成到){ZH_SECOND}(?:上|里|中)?",
        priority=2,
        image=1,
    ),
    *fixed(
        "blur_background",
        rf"blur(?:red)?\s+{THE}(?:background|backdrop|bg)",
        r"(?:blurry|blurred|soft|out[- ]of[- ]focus)\s+(?:background|backdrop|bg)",
        r"background\s+blur",
        r"bokeh(?:\s+effect)?",
        r"(?:shallow\s+depth\s+of\s+field|portrait\s+mode)",
        r"背景虚化|虚化背景|模糊背景|背景模糊|背景变模糊|背景(?:变得)?虚化|把背景(?:虚化|模糊)|景深效果|人像模式",
        priority=2,
    ),
    *fixed(
        "crop_subject",
        rf"crop(?:ped)?\s+(?:it\s+|the\s+{IMAGE}\s+)?(?:to|around|on)\s+{THE}(?:main\s+)?(?:subject|object|foreground|person|product)",
        r"auto[- ]?crop",
        r"tight\s+crop",
        rf"crop\s+(?:out\s+)?{THE}(?:empty\s+space|background)",
        r"(?:裁剪|裁切|剪裁)(?:到|出)?(?:主体|主要对象|人物|物体)|自动裁剪|主体裁剪",
        priority=2,
    ),
    *fixed(
        "vignette",
        r"vignett(?:e|ing)",
        rf"dark(?:en|er|ened)?\s+{THE}(?:corners|edges|borders)",
        r"dark\s+(?:corners|edges|borders)",
        r"暗角|晕影|暗边|四周变暗|边缘变暗|压暗四角|压暗边缘|四角变暗",
        priority=2,
    ),
    # --- fill (needs a mask) ---------------------------------------------------------------
    *built(
        _fill,
        rf"(?:remove|erase|delete|get\s+rid\s+of|take\s+out|take\s+away|clean\s+up|clean|clear|eliminate|wipe\s+out|wipe|retouch\s+out|paint\s+out|heal|repair){_OBJ}",
        rf"fill(?:\s+in)?\s+{THE}(?:hole|gap|masked\s+area|masked\s+region|selection|selected\s+area|blank|missing\s+(?:part|area)|transparent\s+area|area)s?",
        r"inpaint(?:ing)?|content[- ]aware\s+fill",
        rf"(?:去掉|去除|删除|删掉|移除|擦除|擦掉|消除|抹去|抹掉|清除|清理|拿掉|p掉|修复|修补|填充|补全|填补){_ZH_OBJ}",
        rf"把{_ZH_OBJ_BEFORE}(?:去掉|去除|删除|删掉|移除|擦除|擦掉|消除|抹去|抹掉|清除|拿掉|p掉|修掉)",
    ),
    # --- colour and tone ---------------------------------------------------------------------
    *fixed(
        "grayscale",
        r"black\s*(?:and|&|n)\s*white|b\s*&\s*w|b/w|gr[ae]y\s*scale|monochrome|mono(?:chrome)?",
        r"黑白|灰度|去色|单色",
    ),
    *fixed(
        "sepia",
        r"sepia(?:\s+tone[ds]?)?|vintage|old[- ]fashioned|old\s+photo(?:graph)?|antique|retro|aged",
        r"复古|怀旧|棕褐色|老照片|旧照片|泛黄",
    ),
    *fixed(
        "brightness",
        r"bright(?:er|en|ened)|lighten(?:ed)?|lighter|more\s+light|more\s+exposure|(?:increase|raise|boost)\s+(?:the\s+)?(?:brightness|exposure)|brightness\s+up|overexpose(?:d)?",
        r"调亮|提亮|变亮|加亮|更亮|亮一点|亮一些|亮些|(?:提高|增加|调高|加大)(?:亮度|曝光)|亮度(?:调高|提高|增加|加大)|明亮",
        amount=1.0,
    ),
    *fixed(
        "brightness",
        r"dark(?:er|en|ened)|dimmer|dim|less\s+bright|(?:decrease|reduce|lower)\s+(?:the\s+)?(?:brightness|exposure)|brightness\s+down|underexpose(?:d)?",
        r"调暗|变暗|压暗|更暗|暗一点|暗一些|暗些|(?:降低|减少|调低)(?:亮度|曝光)|亮度(?:调低|降低|减少)",
        amount=-1.0,
    ),
    *fixed(
        "contrast",
        rf"{MORE}\s+(?:the\s+)?contrast|contrast\s+(?:up|higher|boost(?:ed)?)|high(?:er)?[- ]contrast|punch(?:y|ier)",
        r"(?:增加|提高|增强|加大|调高)对比度?|对比度(?:调高|提高|增加|加大|增强|高一点|高一些|大一点)|高对比度?",
        amount=1.0,
    ),
    *fixed(
        "contrast",
        rf"{LESS}\s+(?:the\s+)?contrast|contrast\s+(?:down|lower)|low(?:er)?[- ]contrast|flat(?:ter)?\s+look|washed[- ]out",
        r"(?:降低|减少|减弱|调低)对比度?|对比度(?:调低|降低|减少|低一点|低一些|小一点)|低对比度?",
        amount=-1.0,
    ),
    *fixed(
        "saturation",
        rf"{MORE}\s+(?:the\s+)?(?:saturation|vibrance)|more\s+(?:saturated|vivid|vibrant|colou?rful)|saturate(?:d)?|vivid|vibrant|colou?rful|(?:make\s+)?(?:the\s+)?colou?rs\s+pop|(?:boost|enhance)\s+(?:the\s+)?colou?rs",
        r"(?:增加|提高|增强|加大|调高)饱和度|饱和度(?:调高|提高|增加|加大|高一点|高一些)|更鲜艳|鲜艳|色彩更浓|浓郁",
        amount=1.0,
    ),
    *fixed(
        "saturation",
        rf"{LESS}\s+(?:the\s+)?(?:saturation|vibrance)|less\s+(?:saturated|vivid|vibrant|colou?rful)|desaturate(?:d)?|muted(?:\s+(?:colou?rs|tones))?",
        r"(?:降低|减少|减弱|调低)饱和度|饱和度(?:调低|降低|减少|低一点|低一些)|低饱和度?|淡雅",
        amount=-1.0,
    ),
    *fixed(
        "temperature",
        r"warm\s+it\s+up|warm(?:er)?(?:\s+(?:tones?|tint|colou?rs?|look|light))?|golden\s+hour",
        r"暖色调|暖色|暖调|更暖|暖一点|暖一些|偏暖|温暖",
        amount=1.0,
    ),
    *fixed(
        "temperature",
        r"cool\s+it\s+down|cool(?:er)?(?:\s+(?:tones?|tint|colou?rs?|look|light))?|cold(?:er)?(?:\s+tones?)?",
        r"冷色调|冷色|冷调|更冷|冷一点|冷一些|偏冷|清冷",
        amount=-1.0,
    ),
    *fixed(
        "invert",
        rf"invert(?:ed)?(?:\s+{THE}colou?rs?)?|(?:photo\s+)?negative|inverse\s+colou?rs|colou?r\s+inversion",
        r"反色|负片|反相|颜色反转|反转颜色",
    ),
    *fixed(
        "posterize",
        r"pop\s+art|poster(?:\s+(?:effect|style))?",
        r"色调分离|海报(?:效果|风格)?|波普(?:风格)?",
    ),
    *built(
        _posterize,
        r"posteri[sz](?:e|ed|ation)(?:\s+(?:to|with)\s+(?P<levels>\d{1,2})\s+(?:levels|colou?rs))?",
        r"(?:fewer|reduce(?:\s+the)?)\s+colou?rs",
        r"(?:减少颜色|减少色彩)",
    ),
    # --- filters -----------------------------------------------------------------------------
    *fixed(
        "blur",
        r"(?:gaussian\s+)?blur(?:red|ry)?|soften|out\s+of\s+focus|defocus(?:ed)?",
        r"模糊|虚化|柔焦",
    ),
    *fixed(
        "sharpen",
        r"sharpen(?:ed)?|sharper|crisp(?:er)?|more\s+detail(?:ed)?|enhance\s+(?:the\s+)?details?",
        r"锐化|更清晰|清晰一点|清晰一些|变清晰|增强细节",
    ),
    *fixed(
        "pixelate",
        r"pixel(?:ate|ated|ize|ized|ise|ised)|pixel\s+art|8[- ]bit|mosaic|censor(?:ed)?",
        r"像素化|像素风(?:格)?|(?:打)?马赛克|打码",
    ),
    *fixed(
        "sketch",
        r"(?:pencil\s+)?sketch(?:ed)?|pencil\s+drawing|line\s+drawing|line\s+art|charcoal|hand[- ]drawn|drawing",
        r"素描|铅笔画|铅笔素描|线稿|手绘",
    ),
    *fixed(
        "cartoon",
        r"cartoon(?:i[sz]e|i[sz]ed|ish|y)?|comic(?:\s+book)?|styli[sz]e(?:d)?|painterly|(?:oil\s+)?painting|toon",
        r"卡通|漫画|风格化|油画",
    ),
    # --- geometry ----------------------------------------------------------------------------
    *built(
        _flip,
        r"(?:flip|mirror)(?:ped)?(?:\s+(?:it|the\s+image|the\s+photo|the\s+picture))?(?:\s+(?P<axis>horizontally|vertically|left\s+to\s+right|top\s+to\s+bottom|upside\s+down|left-right|up-down))?",
        r"mirror\s+image",
        r"(?P<axis>水平|左右|垂直|上下)?(?:翻转|镜像)",
    ),
    *built(
        _rotate,
        r"rotate(?:d)?(?:\s+(?:it|the\s+image|the\s+photo|the\s+picture))?(?:\s+by)?(?:\s+(?P<deg>\d{1,3})\s*(?:°|degrees?|deg)?)?(?:\s+(?P<dir>clockwise|counter-?clockwise|anti-?clockwise|ccw|cw|to\s+the\s+left|to\s+the\s+right|left|right))?",
        r"(?P<dir>顺时针|逆时针|向左|向右)?旋转(?P<deg>\d{1,3})?(?:度|°)?",
    ),
    *fixed("rotate", r"turn(?:\s+it)?\s+upside\s+down", r"倒过来|上下颠倒|颠倒", degrees=180),
    # --- text --------------------------------------------------------------------------------
    *built(
        _text,
        rf"(?:(?:add|put|write|place|insert|overlay|stamp|type)\s+)?{THE}(?:(?:text|caption|words?|title|label|watermark|heading|headline|quote|sign)\s+)?(?:(?:saying|that\s+says|which\s+says|reading|that\s+reads|with)\s+)?:?\s*{QUOTE}",
        rf"(?:添加|加上|加|写上|写|配上|打上|放上|标上)?(?:文字|文本|标题|字幕|水印|字样|字)?(?:内容)?(?:为|是|：|:)?\s*{QUOTE}(?:的)?(?:文字|字样|几个字|字|标题|水印)?",
    ),
]

MODIFIERS: list[Modifier] = []


def _intensity(factor: float) -> Callable[[Op, re.Match[str]], Op | None]:
    takes = {
        "brightness",
        "contrast",
        "saturation",
        "temperature",
        "blur",
        "sharpen",
        "pixelate",
        "vignette",
        "sepia",
        "cartoon",
        "blur_background",
        "sketch",
    }

    def apply(op: Op, _m: re.Match[str]) -> Op | None:
        return op.scaled(factor) if op.name in takes else None

    return apply


def _position(op: Op, match: re.Match[str]) -> Op | None:
    if op.name != "text":
        return None
    word = match.group("pos")
    if word in ("top", "upper", "顶部", "上方", "上面", "上部", "顶端"):
        return replace(op, position="top")
    if word in ("bottom", "lower", "底部", "下方", "下面", "下部", "底端"):
        return replace(op, position="bottom")
    return replace(op, position="center")


def _text_color(op: Op, match: re.Match[str]) -> Op | None:
    return replace(op, color=color_of(match)) if op.name == "text" else None


MODIFIERS = [
    Modifier(
        "intensity",
        _compile(
            r"slightly|a\s+little(?:\s+bit)?|a\s+(?:tiny\s+)?bit|somewhat|a\s+touch|mildly|gently|subtly|lightly"
        ),
        _intensity(0.5),
    ),
    Modifier(
        "intensity",
        re.compile(r"稍微|略微|稍稍|轻微|轻轻|一点点|微微|有点|有一点"),
        _intensity(0.5),
    ),
    Modifier(
        "intensity",
        _compile(
            r"much|very|a\s+lot|really|significantly|strongly|heavily|extremely|way|far|super|dramatically"
        ),
        _intensity(1.7),
    ),
    Modifier(
        "intensity",
        re.compile(r"非常|很|大幅|大大|强烈|特别|极其|超级|十分|更加|明显"),
        _intensity(1.7),
    ),
    Modifier(
        "position",
        _compile(
            rf"(?:(?:at|on|in|along|across|to)\s+)?{THE}(?P<pos>top|bottom|center|centre|middle|upper|lower)(?:\s+(?:part|edge|side))?(?:\s+of\s+{THE}{IMAGE})?"
        ),
        _position,
    ),
    Modifier(
        "position",
        re.compile(
            r"在?(?:图片|照片|画面)?的?(?P<pos>顶部|底部|上方|下方|中间|中央|正中间|正中|上面|下面|上部|下部|顶端|底端)"
        ),
        _position,
    ),
    Modifier(
        "color",
        _compile(rf"(?:in|with|using)\s+{EN_COLOR}(?:\s+(?:letters|text|colou?r|font|ink))?"),
        _text_color,
    ),
    Modifier("color", _compile(rf"{EN_COLOR}\s+(?:text|letters|font|ink)"), _text_color),
    Modifier("color", re.compile(rf"(?:用)?{ZH_COLOR}色(?:的)?(?:字体|文字|字)?"), _text_color),
]

FILLER_WORDS = [
    "a",
    "an",
    "the",
    "it",
    "its",
    "it's",
    "this",
    "that",
    "these",
    "those",
    "image",
    "images",
    "photo",
    "photos",
    "picture",
    "pictures",
    "pic",
    "photograph",
    "please",
    "pls",
    "kindly",
    "make",
    "turn",
    "give",
    "apply",
    "add",
    "use",
    "using",
    "with",
    "and",
    "then",
    "also",
    "plus",
    "to",
    "into",
    "in",
    "on",
    "of",
    "me",
    "my",
    "our",
    "can",
    "could",
    "would",
    "will",
    "you",
    "i",
    "want",
    "wanna",
    "like",
    "look",
    "looks",
    "looking",
    "style",
    "styled",
    "effect",
    "effects",
    "filter",
    "version",
    "tone",
    "tones",
    "toned",
    "colour",
    "colours",
    "color",
    "colors",
    "mode",
    "treatment",
    "feel",
    "bit",
    "little",
    "more",
    "some",
    "so",
    "is",
    "be",
    "let's",
    "lets",
    "just",
    "now",
    "for",
    "as",
    "same",
    "keep",
    "rest",
    "whole",
    "entire",
    "everything",
    "all",
    "over",
    "overall",
    "thing",
    "stuff",
    "convert",
    "change",
    "set",
    "do",
    "thanks",
    "thank",
    "up",
    "by",
    "put",
    "place",
]
"""English words allowed around the phrases. Kept short on purpose: an unknown word means the
prompt asks for something this engine may not do."""

FILLER_ZH = sorted(
    [
        "请",
        "帮我",
        "帮忙",
        "麻烦",
        "给我",
        "给",
        "把",
        "将",
        "让",
        "使",
        "这张",
        "这个",
        "那张",
        "该",
        "图片",
        "照片",
        "图像",
        "画面",
        "图",
        "一下",
        "的",
        "了",
        "地",
        "得",
        "并且",
        "并",
        "和",
        "然后",
        "再",
        "以及",
        "还有",
        "同时",
        "也",
        "加上",
        "加",
        "添加",
        "增加",
        "变成",
        "改成",
        "转成",
        "转换成",
        "处理成",
        "做成",
        "弄成",
        "调成",
        "换成",
        "变为",
        "改为",
        "成",
        "为",
        "效果",
        "风格",
        "滤镜",
        "样式",
        "色调",
        "一点",
        "一些",
        "些",
        "点",
        "更",
        "吧",
        "呢",
        "啊",
        "谢谢",
        "我",
        "想",
        "要",
        "需要",
        "进行",
        "处理",
        "整张",
        "整个",
        "全部",
        "所有",
        "它",
        "上",
        "下",
        "做",
        "个",
        "张",
        "一",
        "用",
        "来",
        "后",
        "之后",
        "先",
    ],
    key=len,
    reverse=True,
)
"""Chinese filler, matched longest first."""
