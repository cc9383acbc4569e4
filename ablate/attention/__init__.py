"""Attention modules, one file per paper, indexed by the table below (timm `layers/` style).

Each row is what the registry knows of a module without importing it: its name, its class as "module:Class",
its kind, its paper, its knobs with the paper's defaults and where the paper puts it. The class (and torch) is
imported when a model is first built, so reading a study file or a report costs no torch import. A row's knob
defaults are its constructor's too (tests/test_registry.py keeps the two equal).
"""
from ablate.attention.registry import (  # noqa: F401
    AttentionInfo,
    Knob,
    Placement,
    add_attention,
    as_timm_layer,
    create_attention,
    get_attention,
    list_attention,
    load_plugins,
    register_attention,
    resolve_knobs,
)

CBAM_PAPER = "Woo et al., CBAM: Convolutional Block Attention Module, ECCV 2018 (arXiv:1807.06521)"
CBAM_POOLS = ("avg", "max", "lp", "lse")  # the official code's channel descriptors
FCA_FREQS = tuple(f"{kind}{n}" for kind in ("top", "low", "bot") for n in (1, 2, 4, 8, 16, 32))  # official sets
DANET_PAPER = "Fu et al., Dual Attention Network for Scene Segmentation, CVPR 2019 (arXiv:1809.02983)"

BUILTIN = (
    AttentionInfo(
        "attn_pool", "ablate.attention.attn_pool:AttentionWeightedAverage", kind="head",
        placement=Placement("head"),
        paper="Felbo et al., Using millions of emoji occurrences to learn any-domain representations (DeepMoji), "
              "EMNLP 2017 (arXiv:1708.00524)",
    ),
    AttentionInfo(
        "bam", "ablate.attention.bam:BAM", kind="gate", placement=Placement("stage", "all_but_last"),
        paper="Park et al., BAM: Bottleneck Attention Module, BMVC 2018 (arXiv:1807.06514)",
        knobs={
            "reduction": Knob(int, 16, "reduction ratio r of both branches", low=1, high="channels"),
            "dilation": Knob(int, 4, "dilation d of the spatial branch's 3x3 convs", low=1, high=16),
            "num_dilated": Knob(int, 2, "number of dilated 3x3 convs in the spatial branch", low=0, high=4),
            "combine": Knob(str, "add", "how the branches meet: add (paper) or multiply (official code)",
                            choices=("add", "multiply")),
        },
    ),
    AttentionInfo(
        "bot_mhsa", "ablate.attention.bot_mhsa:BotMHSA", kind="conv", placement=Placement("conv", "last"),
        source="timm.layers.bottleneck_attn.BottleneckAttn",
        paper="Srinivas et al., Bottleneck Transformers for Visual Recognition, CVPR 2021 (arXiv:2101.11605)",
        knobs={"heads": Knob(int, 4, "attention heads; must divide the output channels", low=1,
                             high="channels")},
    ),
    AttentionInfo(
        "cbam_channel", "ablate.attention.cbam:ChannelGate", kind="gate", placement=Placement("block"),
        paper=CBAM_PAPER,
        knobs={
            "reduction": Knob(int, 16, "MLP reduction ratio r", low=1, high="channels"),
            "pool_types": Knob(list, ("avg", "max"), "channel descriptors summed after the MLP",
                               choices=CBAM_POOLS),
        },
    ),
    AttentionInfo(
        "cbam_spatial", "ablate.attention.cbam:SpatialGate", kind="gate", placement=Placement("block"),
        paper=CBAM_PAPER,
        knobs={
            "kernel_size": Knob(int, 7, "spatial conv size", low=1, high=15, odd=True),
            "spatial_norm": Knob(bool, False, "BatchNorm after the conv, as the official code"),
        },
    ),
    AttentionInfo(
        "cbam", "ablate.attention.cbam:CBAM", kind="gate", placement=Placement("block"), paper=CBAM_PAPER,
        knobs={
            "reduction": Knob(int, 16, "channel MLP reduction ratio r", low=1, high="channels"),
            "pool_types": Knob(list, ("avg", "max"), "channel descriptors", choices=CBAM_POOLS),
            "kernel_size": Knob(int, 7, "spatial conv size", low=1, high=15, odd=True),
            "arrangement": Knob(str, "channel_first", "order of the two gates",
                                choices=("channel_first", "spatial_first", "parallel")),
            "spatial_norm": Knob(bool, False, "BatchNorm after the spatial conv, as the official code"),
        },
    ),
    AttentionInfo(
        "coord", "ablate.attention.coord:CoordinateAttention", kind="gate", placement=Placement("block"),
        source="timm.layers.coord_attn.CoordAttn",
        paper="Hou et al., Coordinate Attention for Efficient Mobile Network Design, CVPR 2021 (arXiv:2103.02907)",
        knobs={"reduction": Knob(int, 32, "reduction ratio r; mip = max(8, C // r)", low=1,
                                 high="channels")},
    ),
    AttentionInfo(
        "cot", "ablate.attention.cot:CoTConv", kind="conv", placement=Placement("conv"), includes_norm_act=True,
        paper="Li et al., Contextual Transformer Networks for Visual Recognition, TPAMI 2022 (arXiv:2107.12292)",
        knobs={
            "kernel_size": Knob(int, 3, "neighbourhood k of the keys and the local attention", low=1, high=9,
                                odd=True),
            "reduction": Knob(int, 2, "attention embedding width C / reduction (official `factor`)",
                              low=1, high="channels"),
        },
    ),
    AttentionInfo(
        "criss_cross", "ablate.attention.criss_cross:CrissCrossAttention", kind="gate", placement=Placement("head"),
        paper="Huang et al., CCNet: Criss-Cross Attention for Semantic Segmentation, ICCV 2019 (arXiv:1811.11721)",
        knobs={
            "reduction": Knob(int, 8, "query/key width C' = C / reduction (paper: C' < C; official: C / 8)", low=1,
                              high="channels"),
            "recurrence": Knob(int, 2, "R, criss-cross passes sharing weights (RCCA)", low=1, high=4),
        },
    ),
    AttentionInfo(
        "danet_channel", "ablate.attention.danet:ChannelAttention", kind="gate", placement=Placement("head"),
        paper=DANET_PAPER,
        knobs={"energy": Knob(str, "similarity", "softmax of the channel similarities (paper) or of max minus "
                              "them (official code)", choices=("similarity", "max_minus"))},
    ),
    AttentionInfo(
        "danet_position", "ablate.attention.danet:PositionAttention", kind="gate", placement=Placement("head"),
        paper=DANET_PAPER,
        knobs={"reduction": Knob(int, 1, "query/key width C / reduction (paper: C, 1; official code: C / 8, 8)",
                                 low=1, high="channels")},
    ),
    AttentionInfo(
        "eca", "ablate.attention.eca:EfficientChannelAttention", kind="gate", placement=Placement("block"),
        source="timm.layers.EcaModule",
        paper="Wang et al., ECA-Net: Efficient Channel Attention, CVPR 2020 (arXiv:1910.03151)",
        knobs={
            "kernel_size": Knob(int, None, "1D conv size; null = adaptive from gamma and b",
                                low=1, high=31, odd=True, nullable=True),
            "gamma": Knob(float, 2.0, "adaptive kernel: gamma", low=0.5, high=8),
            "b": Knob(float, 1.0, "adaptive kernel: b", low=0, high=8),
        },
    ),
    AttentionInfo(
        "ela", "ablate.attention.ela:EfficientLocalAttention", kind="gate", placement=Placement("block"),
        paper="Xu & Wan, ELA: Efficient Local Attention for Deep Convolutional Neural Networks, 2024 "
              "(arXiv:2403.01123)",
        knobs={
            "kernel_size": Knob(int, 7, "1D conv size k (ELA-T/S: 5, ELA-B/L: 7)", low=1, high=31, odd=True),
            "norm_groups": Knob(int, 16, "GroupNorm groups (ELA-T: 32, others 16)", low=1, high="channels"),
            "channels_per_group": Knob(int, 1, "channels per 1D conv group: 1 depthwise (ELA-T/B), 8 (ELA-S/L)",
                                       low=1, high="channels"),
        },
    ),
    AttentionInfo(
        "epsa", "ablate.attention.epsa:PyramidSplitAttention", kind="conv", placement=Placement("conv"),
        paper="Zhang et al., EPSANet: An Efficient Pyramid Squeeze Attention Block on Convolutional Neural "
              "Network, 2021 (arXiv:2105.14447)",
        knobs={
            "kernels": Knob(list, (3, 5, 7, 9), "conv size of each branch (odd), e.g. 3+5+7+9"),
            "groups": Knob(list, (1, 4, 8, 16), "conv groups of each branch (EPSANet Small: 1+4+8+16)"),
            "reduction": Knob(int, 16, "SEWeight reduction ratio r", low=1, high="channels"),
            "reverse_concat": Knob(bool, False, "concatenate the branches last first, as the official code"),
        },
    ),
    AttentionInfo(
        "external", "ablate.attention.external:ExternalAttention", kind="gate",
        # The paper names no place in a ResNet's blocks (it classifies with EAMLP, an MLP-only net); on a ResNet it
        # sits after the backbone, on the last stage's output: EANet's segmentation net (dilated ResNet-101, then
        # the EA unit; official code MenghaoGuo/EANet). Closest documented use: after the last stage.
        placement=Placement("stage", "last"),
        paper="Guo et al., Beyond Self-attention: External Attention using Two Linear Layers for Visual Tasks, "
              "TPAMI 2022 (arXiv:2105.02358)",
        knobs={"memory_units": Knob(int, 64, "memory size S of M_k and M_v", low=1, high=1024)},
    ),
    AttentionInfo(
        "fca", "ablate.attention.fca:FrequencyChannelAttention", kind="gate", placement=Placement("block"),
        paper="Qin et al., FcaNet: Frequency Channel Attention Networks, ICCV 2021 (arXiv:2012.11879)",
        knobs={
            "reduction": Knob(int, 16, "excitation reduction ratio r", low=1, high="channels"),
            "freq_sel": Knob(str, "top16", "DCT frequencies, one per channel part", choices=FCA_FREQS),
            "dct_size": Knob(int, 7, "DCT filter size; other feature sizes are adaptive-average pooled to it",
                             low=7, high=56),
        },
    ),
    AttentionInfo(
        "gather_excite", "ablate.attention.gather_excite:GatherExcite", kind="gate", placement=Placement("block"),
        paper="Hu et al., Gather-Excite: Exploiting Feature Context in Convolutional Neural Networks, "
              "NeurIPS 2018 (arXiv:1810.12348)",
        knobs={
            "extent": Knob(int, 0, "gather extent e; 0 = global", choices=(0, 2, 4, 8), low=0, high=8),
            "extra_params": Knob(bool, False, "parametric gather (GE-θ) instead of pooling (GE-θ-)"),
            "excite_mlp": Knob(bool, False, "SE-style MLP in the excite (GE-θ+)"),
        },
    ),
    AttentionInfo(
        "gc", "ablate.attention.gc:GlobalContextBlock", kind="gate", source="timm.layers.GlobalContext",
        # after the last 1x1 conv of every bottleneck, before the add (Fig. 4, Table 2b "after1x1"), in stages
        # c3-c5 (Table 2c; the released configs are "r16_gcb_c3-c5": stages=(False, True, True, True))
        placement=Placement("block", "all_but_first"),
        paper="Cao et al., GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond, "
              "ICCVW 2019 (arXiv:1904.11492)",
        knobs={
            "reduction": Knob(int, 16, "transform bottleneck ratio r", low=1, high="channels"),
            "fusion": Knob(str, "add", "how the context joins the features", choices=("add", "scale")),
        },
    ),
    AttentionInfo(
        "gct", "ablate.attention.gct:GatedChannelTransform", kind="gate", placement=Placement("block"),
        paper="Yang et al., Gated Channel Transformation for Visual Recognition, CVPR 2020 (arXiv:1909.11519)",
        knobs={"mode": Knob(str, "l2", "global context embedding: l2 norm (paper) or l1 norm", choices=("l1", "l2"))},
    ),
    AttentionInfo(
        "halo", "ablate.attention.halo:HaloAttention", kind="conv", source="timm.layers.halo_attn.HaloAttn",
        # HaloNet replaces the 3x3 conv of every bottleneck in every stage (only the stem stays a conv: the H0-H7
        # models); its conv-attention hybrids, a speed trade-off, keep convs in the early stages
        placement=Placement("conv"),
        paper="Vaswani et al., Scaling Local Self-Attention for Parameter Efficient Visual Backbones, "
              "CVPR 2021 (arXiv:2103.12731)",
        knobs={
            "block_size": Knob(int, 8, "query block size b; must divide H and W", low=1, high=64),
            "halo_size": Knob(int, 3, "halo h around each block", low=0, high=32),
            "heads": Knob(int, 8, "attention heads; must divide the output channels", low=1, high="channels"),
        },
    ),
    AttentionInfo(
        "lambda", "ablate.attention.lambda_layer:LambdaLayer", kind="conv", placement=Placement("conv"),
        source="timm.layers.lambda_layer.LambdaLayer",
        paper="Bello, LambdaNetworks: Modeling Long-Range Interactions Without Attention, ICLR 2021 "
              "(arXiv:2102.08602)",
        knobs={
            "heads": Knob(int, 4, "query heads |h|; must divide the output channels", low=1, high="channels"),
            "key_depth": Knob(int, 16, "query/key depth |k|", low=1, high=256),
            "context": Knob(int, 23, "local context r of the lambda convolution", low=1, high=63, odd=True),
        },
    ),
    AttentionInfo(
        "multi_attention", "ablate.attention.multi_attention:MultiAttentionHead", kind="head",
        placement=Placement("head"),
        paper="innat/Multi-Attention (Keras): CBAM (Woo et al., ECCV 2018) + DeepMoji attention-weighted average "
              "(Felbo et al., EMNLP 2017) before a BatchNorm-Dense(512)-Dropout tail",
        knobs={
            "reduction": Knob(int, 16, "channel gate MLP reduction ratio r", low=1, high="channels"),
            "kernel_size": Knob(int, 7, "spatial gates' conv size", low=1, high=15, odd=True),
            "hidden": Knob(int, 512, "width of the Dense layer before the classifier", low=1),
            "dropout": Knob(float, 0.5, "dropout before the classifier", low=0.0, high=1.0),
            "second_spatial": Knob(str, "map", "what GAP2 pools: the second spatial map (Keras code) or the "
                                   "features it re-weights", choices=("map", "features")),
        },
    ),
    AttentionInfo(
        "non_local", "ablate.attention.non_local:NonLocalBlock", kind="gate",
        placement=Placement("stage", "all_but_last"), source="timm.layers.NonLocalAttn",
        paper="Wang et al., Non-local Neural Networks, CVPR 2018 (arXiv:1711.07971)",
        knobs={
            "reduction": Knob(int, 2, "inner width C / reduction of theta, phi, g", low=1, high="channels"),
            "sub_sample": Knob(str, "input", "2x2 max pool of x before phi and g (paper eq., official code), "
                               "after them (paper's Fig. 2 remark) or none", choices=("input", "projections", "none")),
            "scale": Knob(bool, False, "scale the affinities by (C / reduction)^-1/2, as the official code"),
        },
    ),
    AttentionInfo(
        "outlook", "ablate.attention.outlook:OutlookGate", kind="gate", source="timm.models.volo.OutlookAttention",
        # VOLO names no place in a ResNet: its outlookers are the first stage, on the finest (1/8) token map, each a
        # residual layer of its own, before transformers take over. Closest: after every block of the first stage
        placement=Placement("block_out", "first"),
        paper="Yuan et al., VOLO: Vision Outlooker for Visual Recognition, TPAMI 2022 (arXiv:2106.13112)",
        knobs={
            "heads": Knob(int, 8, "attention heads; must divide the channels (VOLO-D2/D3: 8)", low=1,
                          high="channels"),
            "kernel_size": Knob(int, 3, "neighbourhood size k", low=1, high=7, odd=True),
            "stride": Knob(int, 2, "pooling of the centres that make the weights; at most kernel_size", low=1,
                           high=4),
        },
    ),
    AttentionInfo(
        "se", "ablate.attention.se:SqueezeExcite", kind="gate", placement=Placement("block"),
        source="timm.layers.SEModule",
        paper="Hu et al., Squeeze-and-Excitation Networks, CVPR 2018 (arXiv:1709.01507)",
        knobs={
            "reduction": Knob(int, 16, "channel reduction ratio r", low=1, high="channels"),
            "squeeze": Knob(str, "avg", "squeeze operator: global average (paper) or max pooling (TPAMI Table 11)",
                            choices=("avg", "max")),
            "excitation": Knob(str, "sigmoid", "the excitation's gate (TPAMI Table 12)",
                               choices=("sigmoid", "tanh", "relu")),
        },
    ),
    AttentionInfo(
        "sge", "ablate.attention.sge:SpatialGroupEnhance", kind="gate", placement=Placement("block"),
        paper="Li et al., Spatial Group-wise Enhance: Improving Semantic Feature Learning in Convolutional Networks, "
              "2019 (arXiv:1905.09646)",
        knobs={
            "groups": Knob(int, 64, "groups G; gcd(G, channels) where G does not divide them", low=1, high=1024),
            "unbiased_std": Knob(bool, False, "unbiased std in the normalisation, as the official code"),
        },
    ),
    AttentionInfo(
        "shuffle_attn", "ablate.attention.shuffle_attn:ShuffleAttention", kind="gate",
        placement=Placement("block"),
        paper="Zhang & Yang, SA-Net: Shuffle Attention for Deep Convolutional Neural Networks, ICASSP 2021 "
              "(arXiv:2102.00240)",
        knobs={"groups": Knob(int, 64, "sub-feature groups G; lowered to the largest that divides C / 2",
                              low=1, high=1024)},
    ),
    AttentionInfo(
        "simam", "ablate.attention.simam:SimAM", kind="gate", placement=Placement("block"),
        paper="Yang et al., SimAM: A Simple, Parameter-Free Attention Module for CNNs, ICML 2021",
        knobs={"e_lambda": Knob(float, 1e-4, "energy regulariser lambda", low=1e-9, high=1.0)},
    ),
    AttentionInfo(
        "sk", "ablate.attention.sk:SelectiveKernelConv", kind="conv", placement=Placement("conv"),
        source="timm.layers.SelectiveKernel", includes_norm_act=True,
        paper="Li et al., Selective Kernel Networks, CVPR 2019 (arXiv:1903.06586)",
        knobs={
            "reduction": Knob(int, 16, "attention reduction ratio r: d = max(C / r, L)", low=1,
                              high="channels"),
            "groups": Knob(int, 32, "groups G of each path's conv", low=1, high="channels"),
            "min_attn_channels": Knob(int, 32, "L, the least attention width d", low=1, high=1024),
            "split_input": Knob(bool, False, "each path sees half the input channels (timm's variant)"),
        },
    ),
    AttentionInfo(
        "split_attn", "ablate.attention.split_attn:SplitAttnConv", kind="conv", placement=Placement("conv"),
        source="timm.layers.SplitAttn", includes_norm_act=True,
        paper="Zhang et al., ResNeSt: Split-Attention Networks, CVPRW 2022 (arXiv:2004.08955)",
        knobs={
            "radix": Knob(int, 2, "splits R per cardinal group", low=1, high=8),
            "reduction": Knob(int, 4, "attention reduction: width C * R / reduction, at least 32", low=1,
                              high="channels"),
            "groups": Knob(int, 1, "cardinality G", low=1, high="channels"),
            "avd": Knob(bool, True, "stride as a 3x3 average pool after the conv (ResNeSt's avd, as the paper and "
                        "the released resnest50); false: a strided conv"),
        },
    ),
    AttentionInfo(
        "srm", "ablate.attention.srm:StyleRecalibration", kind="gate", placement=Placement("block"),
        paper="Lee et al., SRM: A Style-based Recalibration Module for Convolutional Neural Networks, ICCV 2019 "
              "(arXiv:1903.10829)",
        knobs={"unbiased_std": Knob(bool, False, "unbiased std in the style pooling, as the official code")},
    ),
    AttentionInfo(
        "strip_pool", "ablate.attention.strip_pool:StripPooling", kind="gate", placement=Placement("block"),
        paper="Hou et al., Strip Pooling: Rethinking Spatial Pooling for Scene Parsing, CVPR 2020 (arXiv:2003.13328)",
        knobs={"norm_act": Knob(bool, False, "BN after each strip conv and ReLU on their sum (official SPBlock)")},
    ),
    AttentionInfo(
        "triplet", "ablate.attention.triplet:TripletAttention", kind="gate", placement=Placement("block"),
        paper="Misra et al., Rotate to Attend: Convolutional Triplet Attention Module, WACV 2021 (arXiv:2010.03045)",
        knobs={"kernel_size": Knob(int, 7, "conv size of each branch", low=1, high=15, odd=True)},
    ),
)

for _info in BUILTIN:
    add_attention(_info)
