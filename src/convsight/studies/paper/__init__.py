"""The study "How the Deep Convolutional Networks see the World" remade: a list of parts.

Parts: 2, the MNIST CNN (accuracy, conv outputs of a 7); 3, VGG16 channels and class models
(paper preset beside the robust one); 4, the five-class study (an ImageNet subset when given,
else Fashion-MNIST as a labelled stand-in); and the related work made concrete (saliency,
DeconvNet, Grad-CAM); and the discussion's compression idea tested on the networks the run
trained. A part whose inputs are missing is skipped with a note saying why.
Each part follows :class:`~convsight.studies.paper.parts.Part`; the study's own numbers are
:data:`~convsight.studies.numbers.STUDY`; the prose is in ``report/templates/paper*``.
"""

from convsight.studies.numbers import STUDY, StudyNumbers
from convsight.studies.paper.inputs import PaperInputs, photo_files
from convsight.studies.paper.parts import Context, Outcome, Part, Skip
from convsight.studies.paper.plan import FULL, QUICK, Plan
from convsight.studies.paper.report import PaperRun
from convsight.studies.paper.study import PARTS, check_paper_inputs, remake, run_paper

__all__ = [
    "FULL",
    "PARTS",
    "QUICK",
    "STUDY",
    "Context",
    "Outcome",
    "PaperInputs",
    "PaperRun",
    "Part",
    "Plan",
    "Skip",
    "StudyNumbers",
    "check_paper_inputs",
    "photo_files",
    "remake",
    "run_paper",
]
