"""Inception-v1 inflated to 3D (I3D, Carreira & Zisserman 2017) in PyTorch.

The layer structure, names and hyper-parameters follow DeepMind's Kinetics-400
RGB model so that its weights (see :mod:`wtal.features.weights`) load one to one:

* every convolution is followed by a BatchNorm without scale (``gamma`` = 1, a
  learned ``beta``; epsilon 1e-3 as in the TensorFlow/Sonnet model) and a ReLU,
  except the final 1x1x1 logits convolution, which has a bias and no activation;
* convolutions and max-pools use TensorFlow's ``SAME`` padding, computed per
  input size and possibly asymmetric (the extra row/column goes at the end);
  max-pools ignore padded positions (padding with ``-inf``);
* input: ``[B, 3, T, H, W]`` RGB in ``[-1, 1]`` (224x224 for the logits head).

``features()`` returns the 1024-d Mixed_5c output averaged over time and space:
for a 16-frame 224x224 snippet this is the usual WTAL "I3D RGB feature".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["KINETICS400_CLASSES", "InceptionI3d", "Unit3D", "InceptionModule", "same_padding", "MIXED_CHANNELS"]

# out_channels of the Inception blocks: branch0 1x1, branch1 1x1 -> 3x3, branch2 1x1 -> 3x3, branch3 pool -> 1x1
MIXED_CHANNELS = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}


def same_padding(sizes, kernel, stride) -> tuple[int, ...]:
    """TensorFlow ``SAME`` padding for ``F.pad`` on the last ``len(sizes)`` dims.

    Output size is ``ceil(n / s)``; the total padding ``max((out - 1) * s + k - n, 0)``
    is split with the smaller half first. Returned in ``F.pad`` order (last dim first).
    """
    pads: list[int] = []
    for n, k, s in zip(sizes, kernel, stride):
        out = math.ceil(n / s)
        total = max((out - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    flat: list[int] = []
    for low, high in reversed(pads):
        flat.extend((low, high))
    return tuple(flat)


class _BatchNormNoScale(nn.BatchNorm3d):
    """BatchNorm with a learned shift only (Sonnet v1 default: ``scale=False``)."""

    def __init__(self, channels: int, eps: float = 1e-3, momentum: float = 0.001):
        super().__init__(channels, eps=eps, momentum=momentum, affine=False)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # nn.BatchNorm3d.forward passes ``self.bias`` to F.batch_norm as the shift
        # (and ``self.weight`` is None, i.e. no scale): exactly the Sonnet layer.
        return super().forward(x)


class Unit3D(nn.Module):
    """SAME-padded Conv3d -> BatchNorm (no scale) -> ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel=(1, 1, 1),
        stride=(1, 1, 1),
        activation: bool = True,
        batch_norm: bool = True,
        bias: bool = False,
    ):
        super().__init__()
        self.kernel = tuple(kernel)
        self.stride = tuple(stride)
        self.activation = activation
        self.conv = nn.Conv3d(in_channels, out_channels, self.kernel, stride=self.stride, padding=0, bias=bias)
        self.bn = _BatchNormNoScale(out_channels) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(k > 1 for k in self.kernel):
            x = F.pad(x, same_padding(x.shape[-3:], self.kernel, self.stride))
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.activation else x


class MaxPool3dSame(nn.Module):
    """Max-pool with TensorFlow ``SAME`` padding; padded positions never win."""

    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel = tuple(kernel)
        self.stride = tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = same_padding(x.shape[-3:], self.kernel, self.stride)
        if any(pad):
            x = F.pad(x, pad, value=float("-inf"))
        return F.max_pool3d(x, self.kernel, self.stride)


class InceptionModule(nn.Module):
    """The four-branch Inception block, concatenated along channels."""

    def __init__(self, in_channels: int, out_channels):
        super().__init__()
        c0, c1a, c1b, c2a, c2b, c3 = out_channels
        self.branch0 = Unit3D(in_channels, c0)
        self.branch1a = Unit3D(in_channels, c1a)
        self.branch1b = Unit3D(c1a, c1b, kernel=(3, 3, 3))
        self.branch2a = Unit3D(in_channels, c2a)
        self.branch2b = Unit3D(c2a, c2b, kernel=(3, 3, 3))
        self.branch3_pool = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.branch3 = Unit3D(in_channels, c3)
        self.out_channels = c0 + c1b + c2b + c3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch0(x),
                self.branch1b(self.branch1a(x)),
                self.branch2b(self.branch2a(x)),
                self.branch3(self.branch3_pool(x)),
            ],
            dim=1,
        )


class InceptionI3d(nn.Module):
    """I3D up to Mixed_5c, plus the Kinetics logits head."""

    def __init__(self, num_classes: int = 400, in_channels: int = 3):
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels  # 3: RGB; 2: optical flow (x, y)
        self.Conv3d_1a_7x7 = Unit3D(in_channels, 64, kernel=(7, 7, 7), stride=(2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, kernel=(3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        channels = 192
        for name in ("Mixed_3b", "Mixed_3c", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f", "Mixed_5b", "Mixed_5c"):
            block = InceptionModule(channels, MIXED_CHANNELS[name])
            setattr(self, name, block)
            channels = block.out_channels
        self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
        self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
        self.feature_dim = channels  # 1024
        self.logits = Unit3D(channels, num_classes, activation=False, batch_norm=False, bias=True)

    def mixed_5c(self, x: torch.Tensor) -> torch.Tensor:
        """Mixed_5c activations ``[B, 1024, T/8, H/32, W/32]`` for input ``[B, C, T, H, W]`` (C = in_channels)."""
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"I3D expects input [B, {self.in_channels}, T, H, W], got {tuple(x.shape)}")
        x = self.Conv3d_1a_7x7(x)
        x = self.MaxPool3d_2a_3x3(x)
        x = self.Conv3d_2b_1x1(x)
        x = self.Conv3d_2c_3x3(x)
        x = self.MaxPool3d_3a_3x3(x)
        x = self.Mixed_3b(x)
        x = self.Mixed_3c(x)
        x = self.MaxPool3d_4a_3x3(x)
        for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
            x = getattr(self, name)(x)
        x = self.MaxPool3d_5a_2x2(x)
        x = self.Mixed_5b(x)
        return self.Mixed_5c(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 1024]``: Mixed_5c averaged over time, height and width."""
        return self.mixed_5c(x).mean(dim=(2, 3, 4))

    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """Kinetics logits ``[B, num_classes]`` from ``features()`` of 16-frame 224x224 snippets.

        For such a snippet Mixed_5c is 2x7x7, so the head's 2x7x7 average pool equals
        the feature vector and the logits are one linear map of it (= ``forward``).
        """
        weight = self.logits.conv.weight.flatten(1)
        return features @ weight.t() + self.logits.conv.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Kinetics logits ``[B, num_classes]`` (224x224 input, at least 9 frames).

        As in the TF model: 2x7x7 VALID average pool, 1x1x1 conv, mean over time.
        """
        net = self.mixed_5c(x)
        if net.shape[-3] < 2 or net.shape[-2] < 7 or net.shape[-1] < 7:
            raise ValueError(f"the logits head needs Mixed_5c of at least 2x7x7, got {tuple(net.shape[-3:])}")
        net = F.avg_pool3d(net, (2, 7, 7), stride=(1, 1, 1))
        logits = self.logits(net)  # [B, C, T', H', W']
        return logits.mean(dim=(2, 3, 4))

# The 400 Kinetics classes in the order of the logits (alphabetical, as in DeepMind's label map).
KINETICS400_CLASSES: tuple[str, ...] = tuple(
    """
abseiling
air drumming
answering questions
applauding
applying cream
archery
arm wrestling
arranging flowers
assembling computer
auctioning
baby waking up
baking cookies
balloon blowing
bandaging
barbequing
bartending
beatboxing
bee keeping
belly dancing
bench pressing
bending back
bending metal
biking through snow
blasting sand
blowing glass
blowing leaves
blowing nose
blowing out candles
bobsledding
bookbinding
bouncing on trampoline
bowling
braiding hair
breading or breadcrumbing
breakdancing
brush painting
brushing hair
brushing teeth
building cabinet
building shed
bungee jumping
busking
canoeing or kayaking
capoeira
carrying baby
cartwheeling
carving pumpkin
catching fish
catching or throwing baseball
catching or throwing frisbee
catching or throwing softball
celebrating
changing oil
changing wheel
checking tires
cheerleading
chopping wood
clapping
clay pottery making
clean and jerk
cleaning floor
cleaning gutters
cleaning pool
cleaning shoes
cleaning toilet
cleaning windows
climbing a rope
climbing ladder
climbing tree
contact juggling
cooking chicken
cooking egg
cooking on campfire
cooking sausages
counting money
country line dancing
cracking neck
crawling baby
crossing river
crying
curling hair
cutting nails
cutting pineapple
cutting watermelon
dancing ballet
dancing charleston
dancing gangnam style
dancing macarena
deadlifting
decorating the christmas tree
digging
dining
disc golfing
diving cliff
dodgeball
doing aerobics
doing laundry
doing nails
drawing
dribbling basketball
drinking
drinking beer
drinking shots
driving car
driving tractor
drop kicking
drumming fingers
dunking basketball
dying hair
eating burger
eating cake
eating carrots
eating chips
eating doughnuts
eating hotdog
eating ice cream
eating spaghetti
eating watermelon
egg hunting
exercising arm
exercising with an exercise ball
extinguishing fire
faceplanting
feeding birds
feeding fish
feeding goats
filling eyebrows
finger snapping
fixing hair
flipping pancake
flying kite
folding clothes
folding napkins
folding paper
front raises
frying vegetables
garbage collecting
gargling
getting a haircut
getting a tattoo
giving or receiving award
golf chipping
golf driving
golf putting
grinding meat
grooming dog
grooming horse
gymnastics tumbling
hammer throw
headbanging
headbutting
high jump
high kick
hitting baseball
hockey stop
holding snake
hopscotch
hoverboarding
hugging
hula hooping
hurdling
hurling (sport)
ice climbing
ice fishing
ice skating
ironing
javelin throw
jetskiing
jogging
juggling balls
juggling fire
juggling soccer ball
jumping into pool
jumpstyle dancing
kicking field goal
kicking soccer ball
kissing
kitesurfing
knitting
krumping
laughing
laying bricks
long jump
lunge
making a cake
making a sandwich
making bed
making jewelry
making pizza
making snowman
making sushi
making tea
marching
massaging back
massaging feet
massaging legs
massaging person's head
milking cow
mopping floor
motorcycling
moving furniture
mowing lawn
news anchoring
opening bottle
opening present
paragliding
parasailing
parkour
passing American football (in game)
passing American football (not in game)
peeling apples
peeling potatoes
petting animal (not cat)
petting cat
picking fruit
planting trees
plastering
playing accordion
playing badminton
playing bagpipes
playing basketball
playing bass guitar
playing cards
playing cello
playing chess
playing clarinet
playing controller
playing cricket
playing cymbals
playing didgeridoo
playing drums
playing flute
playing guitar
playing harmonica
playing harp
playing ice hockey
playing keyboard
playing kickball
playing monopoly
playing organ
playing paintball
playing piano
playing poker
playing recorder
playing saxophone
playing squash or racquetball
playing tennis
playing trombone
playing trumpet
playing ukulele
playing violin
playing volleyball
playing xylophone
pole vault
presenting weather forecast
pull ups
pumping fist
pumping gas
punching bag
punching person (boxing)
push up
pushing car
pushing cart
pushing wheelchair
reading book
reading newspaper
recording music
riding a bike
riding camel
riding elephant
riding mechanical bull
riding mountain bike
riding mule
riding or walking with horse
riding scooter
riding unicycle
ripping paper
robot dancing
rock climbing
rock scissors paper
roller skating
running on treadmill
sailing
salsa dancing
sanding floor
scrambling eggs
scuba diving
setting table
shaking hands
shaking head
sharpening knives
sharpening pencil
shaving head
shaving legs
shearing sheep
shining shoes
shooting basketball
shooting goal (soccer)
shot put
shoveling snow
shredding paper
shuffling cards
side kick
sign language interpreting
singing
situp
skateboarding
ski jumping
skiing (not slalom or crosscountry)
skiing crosscountry
skiing slalom
skipping rope
skydiving
slacklining
slapping
sled dog racing
smoking
smoking hookah
snatch weight lifting
sneezing
sniffing
snorkeling
snowboarding
snowkiting
snowmobiling
somersaulting
spinning poi
spray painting
spraying
springboard diving
squat
sticking tongue out
stomping grapes
stretching arm
stretching leg
strumming guitar
surfing crowd
surfing water
sweeping floor
swimming backstroke
swimming breast stroke
swimming butterfly stroke
swing dancing
swinging legs
swinging on something
sword fighting
tai chi
taking a shower
tango dancing
tap dancing
tapping guitar
tapping pen
tasting beer
tasting food
testifying
texting
throwing axe
throwing ball
throwing discus
tickling
tobogganing
tossing coin
tossing salad
training dog
trapezing
trimming or shaving beard
trimming trees
triple jump
tying bow tie
tying knot (not on a tie)
tying tie
unboxing
unloading truck
using computer
using remote controller (not gaming)
using segway
vault
waiting in line
walking the dog
washing dishes
washing feet
washing hair
washing hands
water skiing
water sliding
watering plants
waxing back
waxing chest
waxing eyebrows
waxing legs
weaving basket
welding
whistling
windsurfing
wrapping present
wrestling
writing
yawning
yoga
zumba
""".strip().splitlines()
)
