"""The smallest module with a detector's parameter names, built from either ``nn`` (torch's or
ours) so that the ``.pth`` seeds torch writes and the module ``load_pretrained`` reads them into
have the same layout by construction: backbone.body.{conv1, bn1, layer1.0} and
roi_heads.box_predictor.cls_score. Torch-free itself: the fuzzing process never imports torch."""


def tiny_detector(nn):
    model = nn.Module()
    model.backbone, model.roi_heads = nn.Module(), nn.Module()
    model.backbone.body = nn.Module()
    model.backbone.body.conv1 = nn.Conv2d(3, 4, 3, bias=False)
    model.backbone.body.bn1 = nn.BatchNorm2d(4)
    model.backbone.body.layer1 = nn.Sequential(nn.Conv2d(4, 4, 1))
    model.roi_heads.box_predictor = nn.Module()
    model.roi_heads.box_predictor.cls_score = nn.Linear(4, 3)
    return model
