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
        knobs={"reduction": Knob(int, 16, "channel reduction ratio r", low=1, high="channels")},
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
        "triplet", "ablate.attention.triplet:TripletAttention", kind="gate", placement=Placement("block"),
        paper="Misra et al., Rotate to Attend: Convolutional Triplet Attention Module, WACV 2021 (arXiv:2010.03045)",
        knobs={"kernel_size": Knob(int, 7, "conv size of each branch", low=1, high=15, odd=True)},
    ),
)

for _info in BUILTIN:
    add_attention(_info)
